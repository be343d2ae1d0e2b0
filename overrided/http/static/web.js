// overrided's pages, live. Follows /api/events: a transfer that starts shows in its board's row
// at once; anything else that changes what a page shows (a build indexed, a board rendered, a
// fetch finished) fetches the same page again and swaps its live regions ([data-live]) for the
// fresh ones, so the HTML is rendered (and escaped) in one place, on the server. Text from events
// is only ever set with textContent. Without JavaScript the pages are the same, just not live.
"use strict";

(() => {
  const REFRESHING = [
    "build-indexed", "build-failed", "build-removed", "board-rendered", "board-failed",
    "transfer-finished", "transfer-failed",
  ];
  const TOKEN_KEY = "overrided-token"; // sessionStorage: this tab only, gone when it closes
  const inflight = new Map(); // "client name" → the transfer-started event's transfer, + board
  let timer = null;
  let refreshing = false;
  let again = false;
  let ticker = null;

  function size(n) {
    if (n < 1024) return `${n} B`;
    const exp = Math.min(Math.floor(Math.log(n) / Math.log(1024)), 4);
    return `${(n / 1024 ** exp).toFixed(1)} ${"KMGT"[exp - 1]}iB`;
  }

  function setState(text) {
    const el = document.getElementById("live");
    if (!el) return;
    el.hidden = false;
    el.textContent = text;
    document.body.dataset.live = text;
  }

  function schedule() {
    if (timer === null) timer = setTimeout(() => { timer = null; refresh(); }, 200);
  }

  async function refresh() {
    if (refreshing) { again = true; return; }
    refreshing = true;
    try {
      const r = await fetch(location.href, { headers: { Accept: "text/html" }, cache: "no-store" });
      if (!r.ok) return; // a board page whose board went away: keep what is shown
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      const current = new Map([...document.querySelectorAll("[data-live]")].map((e) => [e.dataset.live, e]));
      for (const fresh of doc.querySelectorAll("[data-live]")) {
        const old = current.get(fresh.dataset.live);
        if (old && old.innerHTML !== fresh.innerHTML) old.replaceWith(document.adoptNode(fresh));
      }
      document.body.dataset.refreshed = String(Date.now());
      showInflight();
    } catch (err) {
      setState("reconnecting…");
    } finally {
      refreshing = false;
      if (again) { again = false; schedule(); }
    }
  }

  function rowsOf(board) {
    return [...document.querySelectorAll("[data-board]")].filter((e) => e.dataset.board === board);
  }

  function showInflight() {
    for (const cell of document.querySelectorAll(".inflight")) {
      cell.hidden = true;
      cell.replaceChildren();
    }
    const now = Date.now() / 1000;
    for (const t of inflight.values()) {
      for (const row of rowsOf(t.board)) {
        const cell = row.querySelector(".inflight");
        if (!cell) continue;
        const elapsed = Math.max(now - (t.seen ?? t.started), 0);
        const bar = document.createElement("progress");
        bar.title = t.name;
        let what = `${size(t.size)}`;
        if (t.sent > 0) { // a server that reports bytes so far: a bar that fills, and a speed
          bar.max = t.size;
          bar.value = t.sent;
          what = `${size(t.sent)} of ${size(t.size)}, ${size(t.sent / Math.max(elapsed, 0.001))}/s`;
        }
        const text = document.createElement("div");
        text.className = "sub";
        text.textContent = `fetching ${t.name} over ${t.protocol}: ${what}, ${elapsed.toFixed(1)} s`;
        cell.append(bar, text);
        cell.hidden = false;
      }
    }
    if (inflight.size && ticker === null) ticker = setInterval(showInflight, 500);
    if (!inflight.size && ticker !== null) { clearInterval(ticker); ticker = null; }
  }

  function follow() {
    if (!window.EventSource) return;
    const events = new EventSource("/api/events");
    let dropped = false;
    events.onopen = () => {
      setState("live");
      if (!dropped) return;
      // Events were missed while the stream was down: start again from the server's page.
      dropped = false;
      inflight.clear();
      showInflight();
      schedule();
    };
    events.onerror = () => {
      dropped = true;
      setState("reconnecting…");
    };
    events.addEventListener("transfer-started", (ev) => {
      const e = JSON.parse(ev.data);
      // Elapsed time on this browser's clock, which need not agree with the server's.
      const seen = Date.now() / 1000;
      inflight.set(`${e.data.client} ${e.data.name}`, { ...e.data, board: e.board, seen });
      showInflight();
    });
    events.addEventListener("transfer-progress", (ev) => {
      // About once a second per running transfer: its bytes so far.
      const e = JSON.parse(ev.data);
      const key = `${e.data.client} ${e.data.name}`;
      const t = inflight.get(key);
      if (t) t.sent = e.data.sent;
      else inflight.set(key, { ...e.data, board: e.board, seen: Date.now() / 1000 });
      showInflight();
    });
    for (const kind of REFRESHING) {
      events.addEventListener(kind, (ev) => {
        if (kind.startsWith("transfer-")) {
          const e = JSON.parse(ev.data);
          inflight.delete(`${e.data.client} ${e.data.name}`);
          showInflight();
        }
        schedule();
      });
    }
  }

  function say(out, text, refused) {
    out.textContent = text;
    out.classList.toggle("refused", refused);
  }

  function upload(form) {
    const out = form.querySelector(".upload-result");
    const bar = form.querySelector(".upload-progress");
    const build = form.elements.build.value.trim();
    const token = form.elements.token.value.trim();
    const files = [...form.elements.files.files];
    sessionStorage.setItem(TOKEN_KEY, token);
    const tar = files.find((f) => /\.(tar|tar\.gz|tgz)$/.test(f.name));
    if (!files.length) return say(out, "choose or drop the files to upload", true);
    if (tar && files.length > 1) return say(out, "send a tarball alone, or files without one", true);
    const xhr = new XMLHttpRequest();
    let body;
    if (tar) {
      xhr.open("PUT", `/builds/${encodeURIComponent(build)}`);
      xhr.setRequestHeader("Content-Type", tar.name.endsWith(".tar") ? "application/x-tar" : "application/gzip");
      body = tar;
    } else {
      xhr.open("POST", `/builds/${encodeURIComponent(build)}`);
      body = new FormData();
      for (const f of files) body.append("file", f, f.name);
    }
    xhr.setRequestHeader("Authorization", `Bearer ${token}`);
    xhr.setRequestHeader("Accept", "application/json");
    bar.hidden = false;
    bar.value = 0;
    say(out, `uploading to ${build}…`, false);
    xhr.upload.onprogress = (e) => {
      if (!e.lengthComputable) return;
      bar.max = e.total;
      bar.value = e.loaded;
      say(out, `uploading to ${build}: ${size(e.loaded)} of ${size(e.total)}`, false);
    };
    xhr.onload = () => {
      bar.hidden = true;
      let answer = null;
      try { answer = JSON.parse(xhr.responseText); } catch (err) { answer = null; }
      if (xhr.status >= 400) {
        const why = answer && answer.error ? answer.error : xhr.statusText;
        return say(out, `refused (${xhr.status}): ${why}`, true);
      }
      const lines = [`build ${answer.build}: stored ${answer.files.join(", ")} (${answer.bytes} bytes)`];
      for (const b of answer.on_build) lines.push(`  boots it: ${b}`);
      for (const b of answer.not_on_build) lines.push(`  not on it: ${b}`);
      say(out, lines.join("\n"), false);
    };
    xhr.onerror = () => {
      bar.hidden = true;
      say(out, "the upload broke off before the server answered (a wrong token is refused before the file is read: check it)", true);
    };
    xhr.send(body);
  }

  function setupUpload() {
    const form = document.getElementById("upload");
    if (!form) return;
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) form.elements.token.value = saved;
    const drop = form.querySelector(".drop");
    drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (ev) => {
      ev.preventDefault();
      drop.classList.remove("over");
      form.elements.files.files = ev.dataTransfer.files;
    });
    form.addEventListener("submit", (ev) => { ev.preventDefault(); upload(form); });
  }

  follow();
  setupUpload();
})();
