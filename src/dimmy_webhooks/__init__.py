"""dimmy-webhooks: receive Dimmy's Svix webhooks durably, fetch the items, hand them on."""

__version__ = "0.1.0"
