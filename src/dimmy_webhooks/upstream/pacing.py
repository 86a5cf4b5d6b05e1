"""How fast the Dimmy client may send: a fixed rate, or one learned from the API's answers.

Dimmy does not document its rate limits. In ``DIMMY_API_RATE_MODE=adaptive`` the client paces its
requests with a :class:`~dimmy_webhooks.ratelimit.Pacer` whose rate an :class:`AdaptiveRate`
controller moves by AIMD (additive increase, multiplicative decrease), the way TCP finds a link's
capacity:

- **slow start** (no learned rate yet): while answers are fast and the client uses the whole rate,
  the rate grows by half every :attr:`AdaptiveRate.window` seconds, until the first sign of
  congestion;
- then **additive increase**: by a step of 5 % of the rate at the last cut per window, again only
  while answers are fast and the client uses the whole rate (an idle client learns nothing, so its
  rate does not creep up to the ceiling and then burst);
- **multiplicative decrease**: on a 429, times 0.7, once per congestion episode (a 429 to a
  request sent before the last cut is part of the episode that cut, as TCP counts losses); when the
  median latency of a window rises well above its running baseline (twice it, and 250 ms more),
  times 0.85. A cut that did not bring latency down was not ours to fix: the baseline then moves
  to the new latency instead of cutting again and again;
- never below ``floor`` nor above ``ceiling`` (requests per second).

The learned rate is meant to be kept (:meth:`AdaptiveRate.restore`, see ``services.py``), so a
restart starts where the last run ended, in additive increase.

The clock is injectable (monotonic seconds); nothing here does IO.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable

logger = logging.getLogger(__name__)

SLOW_START_GROWTH = 1.5  # per window while no congestion was ever seen
STEP_SHARE = 0.05  # additive step: this share of the rate at the last cut, per window
THROTTLE_CUT = 0.7  # rate times this on a 429
LATENCY_CUT = 0.85  # rate times this when latency rose
LATENCY_FACTOR = 2.0  # "well above the baseline": at least this many times it...
LATENCY_SLACK = 0.25  # ...and this many seconds more (jitter, a busy client: no signal)
BASELINE_GAIN = 0.05  # how fast the baseline follows a higher median (a lower one: at once)
BUSY_SHARE = 0.8  # the client "uses the whole rate" when it sent at least this share of it
MIN_SAMPLES = 5  # answers a window needs before it says anything about latency
LOG_CHANGE = 0.25  # a log line when the rate moved this much since the last one


class AdaptiveRate:
    """The AIMD controller: reads answers, holds the current :attr:`rate` (requests/s).

    ``start`` is the first rate; ``floor`` <= ``start`` <= ``ceiling`` is expected (values
    outside are clamped). ``window`` (seconds) is how often the rate may grow.
    """

    def __init__(
        self,
        start: float,
        *,
        floor: float,
        ceiling: float,
        window: float = 1.0,
        clock: Callable[[], float],
    ) -> None:
        if not 0 < floor <= ceiling:
            raise ValueError("need 0 < floor <= ceiling")
        self.floor = floor
        self.ceiling = ceiling
        self.window = window
        self._clock = clock
        self.rate = self._clamp(start)
        self.slow_start = True
        self.restored = False
        self.cuts = 0  # congestion episodes seen (429s or latency), for the operator
        self._step_base = self.rate
        self._baseline: float | None = None
        self._hold_until = 0.0  # no growth (and no latency cut) before this
        self._last_cut = -math.inf
        self._latency_cut_pending = False
        self._logged = self.rate
        self._window_start = clock()
        self._sent = 0
        self._samples: list[float] = []
        self._throttled = False

    def _clamp(self, rate: float) -> float:
        return min(self.ceiling, max(self.floor, rate))

    def restore(self, rate: float) -> None:
        """Start from a rate learned before (clamped): no slow start, additive from there."""
        self.rate = self._step_base = self._logged = self._clamp(rate)
        self.slow_start = False
        self.restored = True

    # what the client reports ---------------------------------------------------------------

    def sent(self) -> None:
        """One request is about to go."""
        self._sent += 1

    def answered(self, seconds: float) -> None:
        """An answer other than 429 (or a timeout) came after ``seconds``."""
        self._samples.append(seconds)
        self._maybe_adjust()

    def throttled(self, sent_at: float, paused_until: float) -> None:
        """A 429 to a request sent at ``sent_at``: a cut, unless the request went before the
        last cut (the same episode); no growth until a window after the pause the client
        honours (``paused_until``). Both on this controller's clock."""
        now = self._clock()
        self._throttled = True
        if sent_at >= self._last_cut:
            self._cut(THROTTLE_CUT, "429 from the API")
        self._hold_until = max(self._hold_until, paused_until + self.window)
        self._restart_window(now)

    # the rule -------------------------------------------------------------------------------

    def _maybe_adjust(self) -> None:
        now = self._clock()
        elapsed = now - self._window_start
        if elapsed < self.window or len(self._samples) < MIN_SAMPLES:
            return
        median = statistics.median(self._samples)
        busy = self._sent >= BUSY_SHARE * self.rate * elapsed
        baseline = self._baseline if self._baseline is not None else median
        slow = median > LATENCY_FACTOR * baseline and median - baseline > LATENCY_SLACK
        if slow and self._latency_cut_pending:
            # cutting did not help: the API got slower by itself; take that as the new normal
            baseline = median
            self._latency_cut_pending = False
        elif slow and now >= self._hold_until:
            self._cut(
                LATENCY_CUT, f"latency {median * 1000:.0f} ms, baseline {baseline * 1000:.0f} ms"
            )
            self._latency_cut_pending = True
        elif not slow and not self._throttled and busy and now >= self._hold_until:
            self._latency_cut_pending = False
            if self.slow_start:
                self._set(self.rate * SLOW_START_GROWTH, "no congestion yet")
            else:
                self._set(self.rate + STEP_SHARE * self._step_base, "answers fast")
        if median < baseline:
            baseline = median
        else:
            baseline += BASELINE_GAIN * (median - baseline)
        self._baseline = baseline
        self._restart_window(now)

    def _cut(self, factor: float, reason: str) -> None:
        self.cuts += 1
        self.slow_start = False
        self._set(self.rate * factor, reason)
        self._step_base = self.rate
        self._last_cut = self._clock()
        self._hold_until = max(self._hold_until, self._last_cut + self.window)

    def _set(self, rate: float, reason: str) -> None:
        self.rate = self._clamp(rate)
        if abs(self.rate - self._logged) >= LOG_CHANGE * self._logged:
            logger.info(
                "Dimmy API rate changed",
                extra={
                    "fields": {
                        "rate": round(self.rate, 1),
                        "was": round(self._logged, 1),
                        "reason": reason,
                    }
                },
            )
            self._logged = self.rate

    def _restart_window(self, now: float) -> None:
        self._window_start = now
        self._sent = 0
        self._samples = []
        self._throttled = False
