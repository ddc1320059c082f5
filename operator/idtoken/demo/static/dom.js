// Small DOM and HTTP helpers shared by the demo pages (loaded before login.js and phone.js).
"use strict";

window.demoDom = (() => {
  /** An error description as a sentence: capitalised, with a full stop. */
  function sentence(text) {
    const s = String(text).trim();
    return s.charAt(0).toUpperCase() + s.slice(1) + (/[.!?]$/.test(s) ? "" : ".");
  }

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) if (c !== null && c !== undefined) el.append(c);
    return el;
  }

  /** GET (no body) or POST JSON; throws an Error whose message is the operator's
   * error_description as a sentence, with `code` and `status`, or `network` set when the
   * request never got an answer (message: `unreachable`). */
  async function api(path, body, unreachable) {
    let resp;
    try {
      resp = await fetch(path, {
        method: body === undefined ? "GET" : "POST",
        headers: body === undefined ? {} : { "Content-Type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      const err = new Error(unreachable);
      err.network = true;
      throw err;
    }
    const data = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      const err = new Error(sentence(data.error_description || `HTTP error ${resp.status}`));
      err.code = data.error;
      err.status = resp.status;
      throw err;
    }
    return data;
  }

  return { sentence, h, api };
})();
