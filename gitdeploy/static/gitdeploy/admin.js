/* gitdeploy admin: confirm before a deploy is queued, and a run page that follows its run.
   No framework, no build step. */
(function () {
  "use strict";

  // Every trigger form carries data-confirm: ask first; the POST is still what queues.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form && form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  }, true);

  // A queued or running run: poll its progress every second until it has finished.
  function follow(marker) {
    var url = marker.getAttribute("data-url");
    var badge = document.querySelector(".field-status_display .readonly .gd-status");
    var log = document.querySelector(".gd-log");
    var duration = document.querySelector(".field-duration_display .readonly");
    var title = document.querySelector("#content > h2");
    var failures = 0;
    if (!log) {
      // The log field shows "—" until the first lines arrive: make room for them.
      var cell = document.querySelector(".field-log_display .readonly");
      if (cell) {
        cell.textContent = "";
        log = document.createElement("pre");
        log.className = "gd-pre gd-log";
        cell.appendChild(log);
      }
    }
    function tick() {
      fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
        .then(function (response) {
          if (!response.ok) { throw new Error(String(response.status)); }
          return response.json();
        })
        .then(function (run) {
          failures = 0;
          if (badge) {
            badge.textContent = run.label;
            badge.className = "gd-status gd-status-" + run.status;
          }
          if (log) {
            var atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 20;
            log.textContent = (run.log_truncated ? "[earlier lines on the full page]\n" : "") + run.log;
            if (atBottom) { log.scrollTop = log.scrollHeight; }
          }
          if (duration) { duration.textContent = run.duration; }
          if (title) { title.textContent = run.title; }
          // HTML built and escaped by the server (format_html), for the fields that change.
          Object.keys(run.fields_html || {}).forEach(function (name) {
            var cell = document.querySelector(".field-" + name + " .readonly");
            if (cell) { cell.innerHTML = run.fields_html[name]; }
          });
          document.body.setAttribute("data-run-status", run.status);
          if (!run.finished) {
            window.setTimeout(tick, 1000);
          } else {
            finishedNote(marker);
          }
        })
        .catch(function () {
          failures += 1;
          window.setTimeout(tick, Math.min(1000 * failures, 10000));
        });
    }
    tick();
  }

  // The buttons depend on the outcome (redeploy this commit, roll back): offer them by a reload.
  function finishedNote(marker) {
    var note = document.createElement("p");
    note.className = "gd-finished-note";
    note.setAttribute("role", "status");
    note.textContent = "This run has finished. ";
    var link = document.createElement("a");
    link.href = window.location.pathname;
    link.textContent = "Reload for its actions";
    note.appendChild(link);
    marker.parentNode.insertBefore(note, marker);
    marker.hidden = true;
  }

  document.addEventListener("DOMContentLoaded", function () {
    var marker = document.getElementById("gd-run-progress");
    if (marker) { follow(marker); }
  });
})();
