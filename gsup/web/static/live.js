// gsup web: pages follow the daemon's events (server-sent, from /stream) and fetch
// their main part again when one concerns them; a job's output is followed while it
// runs. No polling of pages: a page changes when an event says something changed.
(function () {
  "use strict";
  const main = document.getElementById("main");
  const live = main.dataset.live;            // "all", "job:ID" or "none"
  let fetching = false, again = false;

  function refresh() {                          // one fetch at a time; one more if events came
    if (fetching) { again = true; return; }
    fetching = true;
    const url = new URL(location.href);
    url.searchParams.set("fragment", "1");
    fetch(url, { cache: "no-store" })
      .then((answer) => answer.ok ? answer.text() : null)
      .then((html) => { if (html !== null) { main.innerHTML = html; followLogs(); } })
      .finally(() => { fetching = false; if (again) { again = false; setTimeout(refresh, 100); } });
  }

  function concerns(events) {
    if (live === "all") return true;
    if (live.startsWith("job:")) {
      const job = Number(live.slice(4));
      return events.some((event) => event.job === job);
    }
    return false;
  }

  function clock(seconds) {                    // as the server writes times: 2026-11-29 12:07:16
    const d = new Date(seconds * 1000), two = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ` +
      `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
  }

  function addRows(events) {                    // the events page: newest on top
    const body = document.querySelector(".live-events tbody");
    if (!body) return;
    for (const event of events) {
      const row = body.insertRow(0);
      const at = clock(event.at);
      const cells = [event.seq, at, null, (event.before || "new") + " → " + event.after,
                     event.why || ""];
      cells.forEach((text, i) => {
        const cell = row.insertCell();
        if (i === 2) {
          const link = document.createElement("a");
          link.href = "/jobs/" + event.job; link.textContent = event.job;
          cell.appendChild(link);
        } else { cell.textContent = text; }
      });
    }
    while (body.rows.length > 500) body.deleteRow(-1);
  }

  const stream = new EventSource("/stream");
  stream.onmessage = (message) => {
    const events = JSON.parse(message.data);
    addRows(events);
    if (concerns(events)) refresh();
  };

  // A running job's output: what was added since the page was drawn, once a second.
  let following = null;
  function followLogs() {
    const title = main.querySelector("[data-job]");
    if (following) { clearInterval(following); following = null; }
    if (!title || title.dataset.state !== "running") return;
    const job = title.dataset.job;
    const offsets = {};
    for (const stream of ["out", "err"]) {
      offsets[stream] = Number(document.getElementById("log-" + stream).dataset.next) || 0;
    }
    following = setInterval(() => {
      for (const stream of ["out", "err"]) {
        fetch(`/jobs/${job}/log/${stream}?from=${offsets[stream]}`, { cache: "no-store" })
          .then((answer) => {
            offsets[stream] = Number(answer.headers.get("X-Next-Offset")) || offsets[stream];
            return answer.text();
          })
          .then((text) => { if (text) document.getElementById("log-" + stream).textContent += text; });
      }
    }, 1000);
  }
  followLogs();
})();
