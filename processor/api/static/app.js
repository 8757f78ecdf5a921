// The pages' behaviour: upload (drag and drop), follow each job's event stream, show its variants.
// Every request goes to this server's own API with the login cookie (same origin); no token is
// ever read or written here (the cookie is HttpOnly).
"use strict";

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function progressText(p) {
  if (!p) return "";
  let text = p.stage;
  if (p.rounds) text += ` · round ${p.round} of ${p.rounds}`;
  if (p.steps) text += ` · step ${p.step} of ${p.steps}`;
  return text;
}

function setProgress(card, p) {
  const bar = card.querySelector("[data-role=bar]");
  const label = card.querySelector("[data-role=progress]");
  if (label) label.textContent = progressText(p);
  if (bar && p && p.rounds) {
    // Round k of N, and the step inside it: one bar over the whole style.
    const within = p.steps ? (p.step || 0) / p.steps : 0;
    bar.max = p.rounds;
    bar.value = Math.min(p.rounds, (p.round - 1) + within);
  }
}

function setStatus(card, status) {
  const badge = card.querySelector("[data-role=status]");
  badge.textContent = status;
  badge.className = "badge status-" + status;
  card.dataset.status = status;
}

function renderGallery(body, job) {
  body.replaceChildren();
  const gallery = el("div", {class: "gallery", "data-role": "gallery"});
  for (const v of job.variants) {
    const fig = el("figure");
    const stem = `${v.style}-${String(v.index).padStart(2, "0")}`;
    let shown, caption, name;
    if (v.kind === "video") {
      // A clip (engine: animate): the MP4 plays; its animated WebP preview is the poster.
      shown = el("video", {src: v.url, poster: v.preview || "", width: v.width, height: v.height, controls: "",
                           loop: "", muted: "", playsinline: "", preload: "metadata", "data-role": "clip"});
      shown.muted = true;
      caption = `${v.style} #${v.index} · seed ${v.seed} · ${v.width}×${v.height} · ${v.frames} frames at ${v.fps} fps `;
      name = `${stem}.mp4`;
    } else {
      shown = el("a", {href: v.url});
      shown.append(el("img", {src: v.url, alt: `${v.style} variant ${v.index}`, width: v.width, height: v.height}));
      caption = `${v.style} #${v.index} · seed ${v.seed} · ${v.width}×${v.height} `;
      name = `${stem}.png`;
    }
    const cap = el("figcaption", {}, caption);
    cap.append(el("a", {class: "button", href: v.download, download: name}, "Download"));
    fig.append(shown, cap);
    gallery.append(fig);
  }
  body.append(gallery);
  if (job.mask_overlay) {
    const fig = el("figure", {class: "mask", "data-role": "mask-overlay"});
    const link = el("a", {href: job.mask_overlay});
    link.append(el("img", {src: job.mask_overlay, alt: "subject mask over the photo"}));
    fig.append(link, el("figcaption", {},
                        "Subject mask: the toy as the background styles saw it (outlined), the background tinted"));
    body.append(fig);
  }
  if (job.contact_sheet) {
    const p = el("p", {class: "sheet"});
    p.append(el("a", {class: "button", href: job.contact_sheet_download, download: "contact-sheet.jpg", "data-role": "sheet"},
                "Contact sheet"));
    body.append(p);
  }
}

function renderFailure(body, job) {
  body.replaceChildren();
  const f = job.failure || {error: "failed", message: job.detail || "the job failed", hint: ""};
  const box = el("div", {class: "failure", "data-role": "failure"});
  const first = el("p");
  first.append(el("strong", {}, f.error), ": ", el("span", {"data-role": "message"}, f.message));
  const hint = el("p", {class: "hint"}, "What to change: ");
  hint.append(el("span", {"data-role": "hint"}, f.hint));
  box.append(first, hint);
  body.append(box);
  // Only what a retry can fix gets the button: a bad photo's failure says what to change instead.
  if (job.id && !(job.failure && job.failure.permanent)) body.append(retryForm(job.id));
}

function retryForm(id) {
  const form = el("form", {method: "post", action: `/jobs/${id}/retry`, class: "inline"});
  form.append(el("button", {type: "submit", "data-role": "retry"}, "Retry"));
  return form;
}

// A queued job that a worker could not run (a style it cannot load): it waits for one that can.
function renderWaiting(body, job) {
  body.replaceChildren();
  if (!job.waiting) return;
  const box = el("div", {class: "waiting", "data-role": "waiting"});
  const first = el("p");
  first.append(el("strong", {}, "Waiting for a worker that can run it."), " ",
               el("span", {"data-role": "message"}, job.waiting.message));
  const hint = el("p", {class: "hint"});
  hint.append(el("span", {"data-role": "hint"}, job.waiting.hint));
  box.append(first, hint);
  body.append(box, retryForm(job.id));
}

// Milliseconds before a refused event stream is asked for again (the API's Retry-After).
const STREAM_RETRY_MS = 10000;

// Follow one job's server-sent events until it ends; onEnd gets the final job.
function follow(card, eventsUrl, onEnd) {
  const seen = [];
  const source = new EventSource(eventsUrl);  // same origin: the cookie goes with it
  const note = (kind) => { seen.push(kind); card.dataset.events = seen.join(" "); };
  source.addEventListener("status", (e) => {
    note("status");
    const job = JSON.parse(e.data);
    setStatus(card, job.status);
    if (job.progress) setProgress(card, job.progress);
    // A job that waits for a capable worker is not at the stage it last reported.
    const label = card.querySelector("[data-role=progress]");
    if (job.waiting && !job.progress && label) label.textContent = "waiting for a worker that can run it";
    const body = card.querySelector("[data-role=body]");
    if (body && (job.waiting || body.querySelector("[data-role=waiting]"))) renderWaiting(body, job);
  });
  source.addEventListener("progress", (e) => {
    note("progress");
    setStatus(card, "running");
    setProgress(card, JSON.parse(e.data));
  });
  for (const kind of ["done", "failed", "cancelled"]) {
    source.addEventListener(kind, (e) => {
      note(kind);
      source.close();
      const job = JSON.parse(e.data);
      setStatus(card, kind);
      const bar = card.querySelector("[data-role=bar]");
      if (bar) bar.remove();
      const label = card.querySelector("[data-role=progress]");
      if (label) label.textContent = "";
      onEnd(job);
    });
  }
  source.onerror = () => {
    const label = card.querySelector("[data-role=progress]");
    // The browser reconnects by itself after a lost connection (or a stream's lifetime); say so
    // instead of freezing silently.
    if (source.readyState === EventSource.CONNECTING) {
      if (label) label.textContent = "connection lost, reconnecting…";
    } else if (source.readyState === EventSource.CLOSED) {
      // Refused (the server's stream caps answer 429): the browser gives up, so ask again later.
      if (label) label.textContent = "waiting for the server…";
      setTimeout(() => follow(card, eventsUrl, onEnd), STREAM_RETRY_MS);
    }
  };
}

// The API's problem+json answer (RFC 9457): what was wrong, and what to change.
async function problemOf(resp) {
  try {
    const body = await resp.json();
    return {message: body.detail || `${resp.status} ${resp.statusText}`,
            hint: body.hint || "Change what it names and submit again."};
  } catch (_) {
    return {message: `${resp.status} ${resp.statusText}`, hint: "Try again in a moment."};
  }
}

function setupUpload(form) {
  const input = form.querySelector("#photos");
  const drop = form.querySelector("#drop");
  const chosen = form.querySelector("#chosen");
  const error = form.querySelector("#upload-error");
  const jobs = document.getElementById("jobs");
  const template = document.getElementById("job-card");
  let files = [];
  const pick = (list) => {
    files = Array.from(list).filter((f) => f.type.startsWith("image/") || f.type === "");
    chosen.textContent = files.length ? files.map((f) => f.name).join(", ") : "";
  };
  input.addEventListener("change", () => pick(input.files));
  for (const kind of ["dragenter", "dragover"]) {
    drop.addEventListener(kind, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const kind of ["dragleave", "drop"]) {
    drop.addEventListener(kind, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => pick(e.dataTransfer.files));
  // The picture of the look: offered only while a chosen style reads one (data-look: an IP-Adapter).
  const look = form.querySelector("#look");
  const lookPicture = form.querySelector("#look-picture");
  const showLook = () => {
    if (look) look.hidden = !form.querySelector("input[name=styles][data-look]:checked");
  };
  for (const box of form.querySelectorAll("input[name=styles]")) box.addEventListener("change", showLook);
  showLook();

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    error.hidden = true;
    if (!files.length) {
      error.textContent = "Pick or drop at least one photo first.";
      error.hidden = false;
      return;
    }
    const styles = Array.from(form.querySelectorAll("input[name=styles]:checked")).map((c) => c.value);
    const variants = form.querySelector("input[name=variants]").value;
    const seed = form.querySelector("input[name=seed]").value;
    for (const file of files) {
      const card = template.content.firstElementChild.cloneNode(true);
      const link = card.querySelector("[data-role=link]");
      link.textContent = file.name;
      jobs.prepend(card);
      const data = new FormData();
      data.append("image", file, file.name);
      for (const s of styles) data.append("styles", s);
      if (variants) data.append("variants", variants);
      if (seed) data.append("seed", seed);
      if (look && !look.hidden && lookPicture.files.length) {
        data.append("style_image", lookPicture.files[0], lookPicture.files[0].name);
      }
      const body = card.querySelector("[data-role=body]");
      const maxBytes = Number(form.dataset.maxBytes);
      if (maxBytes && file.size > maxBytes) {
        // The server would cut the upload off there (413); say so without sending it.
        setStatus(card, "refused");
        card.querySelector("[data-role=bar]").remove();
        renderFailure(body, {failure: {error: "too large", message: `${file.name} is ${file.size.toLocaleString()} bytes; ` +
          `this server takes photos up to ${maxBytes.toLocaleString()} bytes`, hint: "Downscale the photo and upload it again."}});
        continue;
      }
      let resp;
      try {
        resp = await fetch("/v1/jobs", {method: "POST", body: data, credentials: "same-origin"});
      } catch (err) {
        setStatus(card, "failed");
        renderFailure(body, {failure: {error: "upload", message: String(err), hint: "Check the connection and try again."}});
        continue;
      }
      if (resp.status === 401) { location.href = "/login?next=/"; return; }
      if (resp.status !== 202 && resp.status !== 200) {
        setStatus(card, "refused");
        card.querySelector("[data-role=bar]").remove();
        const problem = await problemOf(resp);
        renderFailure(body, {failure: {error: `refused (${resp.status})`, ...problem}});
        continue;
      }
      const job = await resp.json();
      card.dataset.job = job.id;
      link.href = `/jobs/${job.id}`;
      setStatus(card, job.status);
      follow(card, job.links.events, (done) => {
        if (done.status === "done") renderGallery(body, done);
        else renderFailure(body, done);
      });
    }
    files = [];
    input.value = "";
    chosen.textContent = "";
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("upload");
  if (form) setupUpload(form);
  const single = document.querySelector("article.job.single");
  if (single && !["done", "failed", "cancelled"].includes(single.dataset.status)) {
    // The server rendered the job as it was; when it ends, render it again (its gallery or failure).
    follow(single, single.dataset.events, () => location.reload());
  }
});
