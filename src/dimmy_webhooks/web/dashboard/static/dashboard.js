// dimmy-webhooks dashboard: live regions, actions posted as JSON, login, local times.
// Written for this project; no library. Served under the pages' CSP (no inline script):
// everything is wired here from data- attributes. Text from the server is only ever set
// with textContent; refreshed regions are server-rendered HTML parsed into an inert document.
"use strict";

(function () {
  const csrf = () => {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  };

  function flash(text, bad) {
    const box = document.getElementById("flash");
    if (!box) return;
    box.textContent = text;
    box.hidden = false;
    box.classList.toggle("bad", Boolean(bad));
  }

  async function postJSON(url, body, token) {
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json", "x-csrf-token": token || csrf() },
      body: JSON.stringify(body || {}),
    });
    let data = {};
    try {
      data = await response.json();
    } catch (_) {
      data = {};
    }
    if (!response.ok) {
      const detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail || "");
      throw new Error(`${response.status}: ${detail || response.statusText}`);
    }
    return data;
  }

  // times: the server writes UTC; show them in this browser's time zone
  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach((node) => {
      const moment = new Date(node.getAttribute("datetime"));
      if (!Number.isNaN(moment.getTime())) {
        node.title = node.getAttribute("datetime");
        node.textContent = moment.toLocaleString();
      }
    });
  }

  // live regions: ask the same page with live=1 and swap the region's content
  function startLive(region) {
    const url = region.dataset.live;
    if (!url) return;
    const every = Math.max(1, Number(region.dataset.every || 5)) * 1000;
    let busy = false;
    async function refresh() {
      if (busy || document.visibilityState !== "visible") return;
      if (region.contains(document.activeElement) && document.activeElement.tagName === "INPUT") return;
      busy = true;
      try {
        const response = await fetch(url, { credentials: "same-origin", headers: { accept: "text/html" } });
        if (response.status === 401) {
          window.location.assign("/ui/login?next=" + encodeURIComponent(window.location.pathname + window.location.search));
          return;
        }
        if (!response.ok) return;
        const html = await response.text();
        const doc = new DOMParser().parseFromString(html, "text/html");
        const before = new Set(Array.from(region.querySelectorAll("[data-key]"), (n) => n.dataset.key));
        const nodes = Array.from(doc.body.childNodes, (n) => document.importNode(n, true));
        region.replaceChildren(...nodes);
        if (before.size) {
          region.querySelectorAll("[data-key]").forEach((n) => {
            if (!before.has(n.dataset.key)) n.classList.add("fresh");
          });
        }
        localTimes(region);
        region.dispatchEvent(new CustomEvent("refreshed", { bubbles: true }));
      } catch (_) {
        // the next round tries again
      } finally {
        busy = false;
      }
    }
    window.setInterval(refresh, every);
    document.addEventListener("visibilitychange", refresh);
  }

  // actions: buttons and forms with data-post
  function wireActions() {
    document.addEventListener("click", async (event) => {
      const button = event.target.closest("button[data-post]");
      if (!button || button.form) return;
      if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
      button.disabled = true;
      try {
        const result = await postJSON(button.dataset.post, {});
        flash(`${button.dataset.done || "Done."} (${result.queued ?? 0} queued)`);
      } catch (error) {
        flash(`Refused: ${error.message}`, true);
      } finally {
        button.disabled = false;
      }
    });
    document.addEventListener("submit", async (event) => {
      const form = event.target.closest("form[data-post]");
      if (!form) return;
      event.preventDefault();
      const submitter = event.submitter;
      const url = (submitter && submitter.dataset.post) || form.dataset.post;
      const done = (submitter && submitter.dataset.done) || form.dataset.done || "Done.";
      const body = {};
      new FormData(form).forEach((value, name) => {
        body[name] = String(value);
      });
      try {
        await postJSON(url, body);
        flash(done);
        if (form.hasAttribute("data-reload")) window.setTimeout(() => window.location.reload(), 600);
      } catch (error) {
        flash(`Refused: ${error.message}`, true);
      }
    });
    document.querySelectorAll("[data-logout]").forEach((button) => {
      button.addEventListener("click", async () => {
        try {
          const result = await postJSON("/ui/logout", {});
          window.location.assign(result.next || "/ui/login");
        } catch (error) {
          flash(`Refused: ${error.message}`, true);
        }
      });
    });
  }

  function wireLogin() {
    const form = document.getElementById("login");
    if (!form) return;
    const error = document.getElementById("login-error");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      error.hidden = true;
      try {
        const token = form.querySelector('input[name="token"]').value;
        const result = await postJSON("/ui/login", { token, next: form.dataset.next }, form.dataset.csrf);
        window.location.assign(result.next || "/");
      } catch (failure) {
        error.textContent = failure.message;
        error.hidden = false;
      }
    });
  }

  // filter forms: datetime-local inputs (this browser's time) fill hidden UTC fields
  function wireTimeFilters() {
    document.querySelectorAll("form[data-utc-form]").forEach((form) => {
      form.querySelectorAll("input[data-utc]").forEach((input) => {
        const hidden = form.querySelector(`input[type="hidden"][name="${input.dataset.utc}"]`);
        if (!hidden || !hidden.value) return;
        const moment = new Date(hidden.value);
        if (Number.isNaN(moment.getTime())) return;
        const local = new Date(moment.getTime() - moment.getTimezoneOffset() * 60000);
        input.value = local.toISOString().slice(0, 19);
      });
      form.addEventListener("submit", () => {
        form.querySelectorAll("input[data-utc]").forEach((input) => {
          const hidden = form.querySelector(`input[type="hidden"][name="${input.dataset.utc}"]`);
          if (!hidden) return;
          hidden.value = input.value ? new Date(input.value).toISOString() : "";
        });
        // empty fields stay out of the address
        form.querySelectorAll("input[name], select[name]").forEach((field) => {
          if (!field.value) field.disabled = true;
        });
      });
    });
  }

  // a photo that cannot be loaded shows its alternative text instead of a broken image
  document.addEventListener(
    "error",
    (event) => {
      if (event.target instanceof HTMLImageElement) event.target.classList.add("broken");
    },
    true,
  );

  // the account switcher: choosing an account shows it at once (the button, without script)
  function wireSwitchers() {
    document.querySelectorAll("select[data-autosubmit]").forEach((select) => {
      select.addEventListener("change", () => select.form && select.form.submit());
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    wireSwitchers();
    localTimes(document);
    document.querySelectorAll("[data-live]").forEach(startLive);
    wireActions();
    wireLogin();
    wireTimeFilters();
  });
})();
