// zkq dashboard: refreshes the page's <main> every few seconds without reloading the page,
// and asks before actions that cannot be undone. Served from the binary; no library.
(function () {
  "use strict";

  var every = Number(document.body.dataset.refreshMs) || 3000;
  var live = document.getElementById("live");

  // A message after an action (?done=...) is shown once: refreshes fetch the page without it.
  var url = new URL(window.location.href);
  if (url.searchParams.has("done")) {
    url.searchParams.delete("done");
    url.searchParams.delete("n");
    window.history.replaceState(null, "", url.toString());
  }

  function selecting(element) {
    var selection = window.getSelection();
    return selection !== null && !selection.isCollapsed && element.contains(selection.anchorNode);
  }

  var busy = false;
  function refresh() {
    if (busy || document.hidden) {
      return;
    }
    busy = true;
    fetch(window.location.href, { cache: "no-store", credentials: "same-origin" })
      .then(function (response) {
        return response.text().then(function (text) {
          var fresh = new DOMParser().parseFromString(text, "text/html").querySelector("main");
          var current = document.querySelector("main");
          // Left alone when nothing changed, or while text in it is selected (to be copied).
          if (fresh && current && fresh.innerHTML !== current.innerHTML && !selecting(current)) {
            current.replaceWith(fresh);
          }
          live.textContent = (response.ok ? "live · " : "error · ") + new Date().toLocaleTimeString();
          live.className = response.ok ? "" : "stale";
        });
      })
      .catch(function () {
        live.textContent = "offline · retrying";
        live.className = "stale";
      })
      .finally(function () {
        busy = false;
      });
  }
  window.setInterval(refresh, every);

  document.addEventListener("submit", function (event) {
    var question = event.target.dataset.confirm;
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });
})();
