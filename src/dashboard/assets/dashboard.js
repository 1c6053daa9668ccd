// dishflow dashboard: asks for the panels every data-refresh-ms and swaps those that
// changed, without reloading the page. Served by dishflow itself.
"use strict";
(function () {
  const every = Number(document.body.dataset.refreshMs) || 2000;
  const status = document.getElementById("status");
  // What each panel was last set to (the browser re-serialises innerHTML differently).
  const shown = new Map();
  async function refresh() {
    try {
      const response = await fetch("/panels", { credentials: "same-origin", cache: "no-store" });
      if (!response.ok) {
        throw new Error("HTTP " + response.status);
      }
      const data = await response.json();
      for (const [id, html] of Object.entries(data.panels)) {
        const body = document.getElementById(id);
        if (body && shown.get(id) !== html) {
          body.innerHTML = html;
          shown.set(id, html);
        }
        const changed = document.getElementById(id + "-changed");
        if (changed && changed.textContent !== data.changed[id]) {
          changed.textContent = data.changed[id];
        }
      }
      status.classList.remove("stale");
      status.textContent = "Updated " + new Date().toLocaleTimeString() + ", read in " +
        data.server_ms.toFixed(1) + " ms.";
    } catch (error) {
      status.classList.add("stale");
      status.textContent = "Cannot update (" + error.message + "); retrying.";
    } finally {
      setTimeout(refresh, every);
    }
  }
  setTimeout(refresh, every);
})();
