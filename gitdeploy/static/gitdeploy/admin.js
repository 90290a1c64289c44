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
    var commits = document.querySelector(".field-commits .readonly");
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
          if (commits && run.commits_html) { commits.innerHTML = run.commits_html; }
          document.body.setAttribute("data-run-status", run.status);
          if (!run.finished) { window.setTimeout(tick, 1000); }
        })
        .catch(function () {
          failures += 1;
          window.setTimeout(tick, Math.min(1000 * failures, 10000));
        });
    }
    tick();
  }

  document.addEventListener("DOMContentLoaded", function () {
    var marker = document.getElementById("gd-run-progress");
    if (marker) { follow(marker); }
  });
})();
