// The phone, in the browser: a non-extractable P-256 key made with WebCrypto and kept in
// IndexedDB, enrollment with a demo enrollment token, then /auth/pending every 1.5 s and
// signed approvals. Every signature is ES256 over the exact message of the wire contract (§2);
// WebCrypto's ECDSA output is already the raw 64-byte r||s, sent as base64url without padding.
"use strict";

(() => {
  const STATE_KEY = "idtoken-demo:phone";
  const TOKEN_KEY = "idtoken-demo:tokenId"; // read by the relying-party page to prefill
  const DB_NAME = "idtoken-demo";
  const DB_STORE = "keys";
  const POLL_MS = 1500;
  const EU = new Set(["AUT", "BEL", "BGR", "HRV", "CYP", "CZE", "DNK", "EST", "FIN", "FRA", "DEU",
    "GRC", "HUN", "IRL", "ITA", "LVA", "LTU", "LUX", "MLT", "NLD", "POL", "PRT", "ROU", "SVK", "SVN",
    "ESP", "SWE", "D"]);

  const $ = (id) => document.getElementById(id);
  const enc = new TextEncoder();

  let config = { scopes: {}, defaultIdentity: {} };
  let phone = null; // {tokenId, deviceId, credential, expiresAt}
  let keys = null; // {privateKey, publicKey} (CryptoKey objects from IndexedDB)
  let claims = {}; // the credential's payload
  let pollTimer = null;
  let polling = false;
  const cards = new Map(); // sessionId -> {session, el, busy}
  const finished = new Set();

  const { h } = window.demoDom; // dom.js, loaded first

  // ---------------------------------------------------------------- encoding and crypto
  function b64url(bytes) {
    let s = "";
    for (const b of bytes) s += String.fromCharCode(b);
    return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function b64urlJson(part) {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const bin = atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4));
    return JSON.parse(new TextDecoder().decode(Uint8Array.from(bin, (c) => c.charCodeAt(0))));
  }

  function randomHex(bytes) {
    return [...crypto.getRandomValues(new Uint8Array(bytes))].map((b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function sha256hex(text) {
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", enc.encode(text)));
    return [...digest].map((b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function spkiPem(publicKey) {
    const der = new Uint8Array(await crypto.subtle.exportKey("spki", publicKey));
    let s = "";
    for (const b of der) s += String.fromCharCode(b);
    const body = btoa(s).match(/.{1,64}/g).join("\n");
    return `-----BEGIN PUBLIC KEY-----\n${body}\n-----END PUBLIC KEY-----\n`;
  }

  /** ES256: ECDSA P-256 with SHA-256 over the UTF-8 message; raw r||s, base64url, no padding. */
  async function sign(privateKey, message) {
    const sig = await crypto.subtle.sign({ name: "ECDSA", hash: "SHA-256" }, privateKey, enc.encode(message));
    return b64url(new Uint8Array(sig));
  }

  // ---------------------------------------------------------------- IndexedDB (the key)
  function db() {
    return new Promise((resolve, reject) => {
      const req = indexedDB.open(DB_NAME, 1);
      req.onupgradeneeded = () => req.result.createObjectStore(DB_STORE);
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
  }

  async function idb(mode, fn) {
    const conn = await db();
    try {
      return await new Promise((resolve, reject) => {
        const tx = conn.transaction(DB_STORE, mode);
        const req = fn(tx.objectStore(DB_STORE));
        tx.oncomplete = () => resolve(req.result);
        tx.onerror = () => reject(tx.error);
        tx.onabort = () => reject(tx.error);
      });
    } finally {
      conn.close();
    }
  }

  const loadKeys = () => idb("readonly", (s) => s.get("device"));
  const saveKeys = (pair) => idb("readwrite", (s) => s.put(pair, "device"));
  const dropKeys = () => idb("readwrite", (s) => s.delete("device"));

  // ---------------------------------------------------------------- HTTP
  const api = (path, body) => window.demoDom.api(path, body, "The operator cannot be reached.");

  function setConn(kind, text) {
    const pill = $("conn");
    pill.className = `pill ${kind}`;
    pill.textContent = text;
  }

  // ---------------------------------------------------------------- screens
  function showEnroll(message) {
    stopPolling();
    $("home").hidden = true;
    $("enroll-card").hidden = false;
    $("enroll-error").textContent = message || "";
    $("enroll-error").hidden = !message;
    setConn("", "Not enrolled");
  }

  function showHome() {
    $("enroll-card").hidden = true;
    $("home").hidden = false;
    $("token-id").textContent = phone.tokenId;
    try {
      claims = b64urlJson(phone.credential.split(".")[1]);
    } catch (e) {
      claims = {};
    }
    const name = [claims.givenName, claims.familyName].filter(Boolean).join(" ");
    $("who").textContent = name || "No name in the credential";
    const facts = [];
    if (claims.dateOfBirth) facts.push(`Born ${claims.dateOfBirth}`);
    if (claims.nationality) facts.push(claims.nationality);
    if (claims.email) facts.push(claims.email);
    if (claims.trustLevel) facts.push(`Trust level ${claims.trustLevel}`);
    $("facts").replaceChildren(...facts.map((f) => h("span", { class: "tag", text: f })));
    startPolling();
  }

  // ---------------------------------------------------------------- enrollment
  async function enroll(event) {
    event.preventDefault();
    const button = $("enroll-button");
    const error = $("enroll-error");
    error.hidden = true;
    const wanted = $("enroll-token-id").value.trim();
    if (wanted && !/^[A-Za-z0-9._:@-]{1,128}$/.test(wanted)) {
      error.textContent = "A token ID uses letters, digits and . _ : @ - only.";
      error.hidden = false;
      return;
    }
    button.disabled = true;
    button.textContent = "Enrolling…";
    try {
      const body = {};
      if (wanted) body.tokenId = wanted;
      for (const [field, id] of [["givenName", "given-name"], ["familyName", "family-name"],
        ["birthdate", "birthdate"], ["nationality", "nationality"], ["email", "email"]]) {
        const value = $(id).value.trim();
        if (value) body[field] = value;
      }
      // 1. The device key: private part not extractable, never leaves this browser.
      const pair = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, false, ["sign", "verify"]);
      // 2. A demo enrollment token, as an integration server would issue it.
      const minted = await api("/demo/api/enrollment-token", body);
      // 3. /enroll, with proof of possession of the key.
      const deviceId = `web-${randomHex(8)}`;
      const timestamp = Date.now();
      const digest = await sha256hex(minted.enrollmentToken);
      const signature = await sign(pair.privateKey, `enroll|${deviceId}|${timestamp}|${digest}`);
      const done = await api("/enroll", {
        enrollmentToken: minted.enrollmentToken,
        publicKeyPem: await spkiPem(pair.publicKey),
        deviceId,
        timestamp,
        signature,
      });
      await saveKeys(pair);
      keys = pair;
      phone = { tokenId: done.tokenId, deviceId: done.deviceId, credential: done.credential, expiresAt: done.expiresAt };
      localStorage.setItem(STATE_KEY, JSON.stringify(phone));
      localStorage.setItem(TOKEN_KEY, phone.tokenId);
      resetRequests();
      showHome();
    } catch (e) {
      error.textContent = `Enrollment failed. ${e.message}`;
      error.hidden = false;
    } finally {
      button.disabled = false;
      button.textContent = "Enroll";
    }
  }

  async function forget() {
    stopPolling();
    localStorage.removeItem(STATE_KEY);
    if (localStorage.getItem(TOKEN_KEY) === (phone && phone.tokenId)) localStorage.removeItem(TOKEN_KEY);
    phone = null;
    keys = null;
    resetRequests();
    $("history").replaceChildren();
    try { await dropKeys(); } catch (e) { /* nothing to drop */ }
    showEnroll("");
  }

  // ---------------------------------------------------------------- polling
  function startPolling() {
    stopPolling();
    polling = true;
    setConn("wait", "Connecting");
    poll();
  }

  function stopPolling() {
    polling = false;
    clearTimeout(pollTimer);
    pollTimer = null;
  }

  async function poll() {
    if (!polling || !phone) return;
    const tokenId = phone.tokenId;
    try {
      const timestamp = Date.now();
      const signature = await sign(keys.privateKey, `${tokenId}|pending|${timestamp}`);
      const data = await api("/auth/pending", { tokenId, timestamp, signature });
      if (!polling || !phone || phone.tokenId !== tokenId) return;
      setConn("ok", "Online");
      sync(data.sessions || []);
    } catch (e) {
      if (!polling) return;
      if (e.code === "token_revoked" || (e.code === "invalid_signature" && !/timestamp/i.test(e.message))) {
        stopPolling();
        setConn("bad", "Not accepted");
        lost(e.code === "token_revoked"
          ? "The operator revoked this token."
          : "The operator no longer knows this phone's key: it was restarted with the in-memory store, or the token was enrolled on another device.");
        return;
      }
      setConn("bad", e.network ? "Offline, retrying" : "Error, retrying");
    }
    if (polling) pollTimer = setTimeout(poll, POLL_MS);
  }

  function lost(text) {
    $("requests").replaceChildren();
    cards.clear();
    $("idle").hidden = true;
    addHistory("bad", "!", "This phone is not enrolled any more", text,
      h("button", { type: "button", class: "primary block", text: "Enroll again", onclick: forget }));
  }

  function resetRequests() {
    cards.clear();
    finished.clear();
    $("requests").replaceChildren();
    $("idle").hidden = false;
  }

  function sync(sessions) {
    const seen = new Set();
    for (const s of sessions) {
      seen.add(s.sessionId);
      if (!cards.has(s.sessionId) && !finished.has(s.sessionId)) addCard(s);
    }
    for (const [id, card] of cards) {
      if (!seen.has(id) && !card.busy) {
        const expired = Date.parse(card.session.expiresAt) <= Date.now() + 1000;
        conclude(id, "warn", "◷", expired ? "Request expired" : "Request closed",
          expired ? `${card.session.serviceName}: nobody answered in time.` : `${card.session.serviceName}: the login ended elsewhere.`);
      }
    }
    $("idle").hidden = cards.size > 0;
  }

  // ---------------------------------------------------------------- a login request
  function scopePreview(scope) {
    const c = claims;
    const name = [c.givenName, c.familyName].filter(Boolean).join(" ");
    let age = null;
    if (c.dateOfBirth) {
      const [y, m, d] = c.dateOfBirth.split("-").map(Number);
      const now = new Date();
      age = now.getFullYear() - y - ((now.getMonth() + 1 < m || (now.getMonth() + 1 === m && now.getDate() < d)) ? 1 : 0);
    }
    const yes = (b) => (b ? "Yes" : "No");
    const range = (a) => (a < 18 ? "<18" : a < 25 ? "18-24" : a < 35 ? "25-34" : a < 45 ? "35-44" : a < 55 ? "45-54" : a < 65 ? "55-64" : "65+");
    switch (scope) {
      case "identity:name": return name;
      case "identity:given_name": return c.givenName;
      case "identity:family_name": return c.familyName;
      case "identity:date_of_birth": return c.dateOfBirth;
      case "identity:nationality": return c.nationality;
      case "identity:email": return c.email;
      case "identity:phone": return c.phoneNumber;
      case "identity:document": return c.documentNumber ? `${c.documentType || "Document"} ${c.documentNumber}` : "";
      case "identity:trust_level": return c.trustLevel ? `Level ${c.trustLevel}` : "";
      case "identity:age_over_18": return age === null ? "" : yes(age >= 18);
      case "identity:age_over_21": return age === null ? "" : yes(age >= 21);
      case "identity:age_over_25": return age === null ? "" : yes(age >= 25);
      case "identity:age_range": return age === null ? "" : range(age);
      case "identity:is_eu_citizen": return c.nationality ? yes(EU.has(c.nationality)) : "";
      case "identity:name_initial":
        return [c.givenName, c.familyName].filter(Boolean).map((n) => `${n[0].toUpperCase()}.`).join(" ");
      case "identity:basic": return [name, c.trustLevel ? `level ${c.trustLevel}` : ""].filter(Boolean).join(", ");
      case "identity:age_verification": return [age === null ? "" : `over 18: ${yes(age >= 18).toLowerCase()}`, name].filter(Boolean).join(", ");
      case "identity:full": return [name, c.dateOfBirth, c.nationality].filter(Boolean).join(", ");
      default: return "";
    }
  }

  function renderCode(otp) {
    const el = h("div", { class: "code", "data-otp": otp, "aria-label": otp.split("").join(" ") },
      h("span", { text: otp.slice(0, 3) }), h("span", { text: otp.slice(3) }));
    return el;
  }

  function addCard(s) {
    const typed = s.autoPassword === undefined;
    const toggles = [];
    const list = h("ul", { class: "switches" });
    for (const scope of s.scopes) {
      const input = h("input", { type: "checkbox", role: "switch", value: scope, "data-scope": scope });
      input.checked = true;
      toggles.push(input);
      const value = scopePreview(scope);
      const label = (config.scopes[scope] || {}).label || scope;
      list.append(h("li", {}, h("label", { class: "switch-row" },
        h("span", { class: "text" }, label,
          value ? h("span", { class: "value", text: value }) : h("span", { class: "value muted", text: "not in your credential" }),
          h("small", { text: scope })),
        input, h("span", { class: "switch", "aria-hidden": "true" }))));
    }
    let codeInput = null;
    let codePart;
    if (typed) {
      codeInput = h("input", {
        type: "text", class: "code-input", inputmode: "numeric", autocomplete: "one-time-code",
        maxlength: "6", pattern: "[0-9]{6}", placeholder: "••••••", "aria-label": "Code shown on the website",
      });
      codePart = h("div", {}, h("label", { text: "Type the code shown on the website" }), codeInput);
    } else if (s.backchannel) {
      // CIBA: no website shows a code; the caller's device shows this message instead.
      codePart = h("div", { class: "code-box" },
        h("div", { class: "eyebrow", text: "Check that the caller or terminal shows" }),
        h("div", { class: "binding", text: s.bindingMessage || "(no message: ask who is asking)" }));
    } else {
      codePart = h("div", { class: "code-box" },
        h("div", { class: "eyebrow", text: "Check that the website shows" }), renderCode(s.autoPassword));
    }
    const error = h("p", { class: "error", role: "alert", hidden: true });
    const approve = h("button", { type: "button", class: "primary", text: "Approve" });
    const reject = h("button", { type: "button", class: "secondary", text: "Reject" });
    const notMe = h("button", { type: "button", class: "danger", text: "Not me" });
    const expiry = h("span", { class: "expiry", "data-expires": s.expiresAt });
    const el = h("article", { class: "card request", "data-session": s.sessionId, "data-service": s.serviceId },
      h("div", { class: "req-head" },
        h("div", { class: "avatar", "aria-hidden": "true", text: (s.serviceName || s.serviceId).slice(0, 1).toUpperCase() }),
        h("div", {},
          h("div", { class: "service", text: s.serviceName || s.serviceId }),
          h("div", { class: "small muted" }, "wants you to sign in · expires in ", expiry))),
      codePart,
      h("div", { class: "label", text: `Share with ${s.serviceName || s.serviceId}` }),
      list,
      h("div", { class: "actions" }, approve, reject, notMe),
      error);
    const card = { session: s, el, busy: false, toggles, codeInput, error, buttons: [approve, reject, notMe] };
    cards.set(s.sessionId, card);
    approve.addEventListener("click", () => decide(card, "approve"));
    reject.addEventListener("click", () => decide(card, "user_rejected"));
    notMe.addEventListener("click", () => decide(card, "not_me"));
    if (codeInput) codeInput.addEventListener("keydown", (e) => { if (e.key === "Enter") decide(card, "approve"); });
    $("requests").prepend(el);
    tickExpiry();
    if (typeof navigator.vibrate === "function") navigator.vibrate(80);
  }

  function cardError(card, text) {
    card.error.textContent = text;
    card.error.hidden = !text;
  }

  async function decide(card, action) {
    if (card.busy) return;
    const s = card.session;
    let otp = null;
    if (action === "approve") {
      otp = card.codeInput ? card.codeInput.value.replace(/\s+/g, "") : s.autoPassword;
      if (!/^[0-9]{6}$/.test(otp)) {
        cardError(card, "Type the 6-digit code shown on the website.");
        card.codeInput.focus();
        return;
      }
    }
    card.busy = true;
    card.buttons.forEach((b) => { b.disabled = true; });
    cardError(card, "");
    const name = s.serviceName || s.serviceId;
    try {
      const timestamp = Date.now();
      if (action === "approve") {
        const granted = card.toggles.filter((t) => t.checked).map((t) => t.value);
        // A backchannel request's binding message is signed too, as its SHA-256 (hex).
        let message = `${s.sessionId}|${otp}|${timestamp}|${granted.join(" ")}`;
        if (s.bindingMessage !== undefined) message += `|${await sha256hex(s.bindingMessage)}`;
        const signature = await sign(keys.privateKey, message);
        await api("/auth/verify", {
          sessionId: s.sessionId, tokenId: phone.tokenId, otp, grantedScopes: granted,
          timestamp, credential: phone.credential, signature,
        });
        const shared = granted.map((g) => (config.scopes[g] || {}).label || g);
        conclude(s.sessionId, "ok", "✓", "Approved",
          `You are signed in to ${name}. Shared: ${shared.length ? shared.join(", ") : "nothing beyond your token ID"}.`);
      } else {
        const signature = await sign(keys.privateKey, `${s.sessionId}|reject|${timestamp}`);
        await api("/auth/reject", { sessionId: s.sessionId, tokenId: phone.tokenId, timestamp, reason: action, signature });
        if (action === "not_me") {
          conclude(s.sessionId, "bad", "!", "Reported as not you",
            `${name} was told the login was not yours. Pending logins were cancelled and new ones are paused for a while.`);
        } else {
          conclude(s.sessionId, "warn", "✕", "Rejected", `${name} was told you declined.`);
        }
      }
    } catch (e) {
      card.busy = false;
      card.buttons.forEach((b) => { b.disabled = false; });
      if (e.code === "invalid_otp") {
        cardError(card, "That code does not match the website. Check it and try again.");
        if (card.codeInput) card.codeInput.select();
      } else if (e.network) {
        cardError(card, e.message);
      } else if (["session_expired"].includes(e.code)) {
        conclude(s.sessionId, "warn", "◷", "Request expired", `${name}: the request expired before your answer.`);
      } else {
        conclude(s.sessionId, "bad", "!", "Not accepted", `${name}: ${e.message}`);
      }
    }
  }

  function conclude(sessionId, kind, icon, title, text) {
    const card = cards.get(sessionId);
    if (card) {
      card.el.remove();
      cards.delete(sessionId);
    }
    finished.add(sessionId);
    addHistory(kind, icon, title, text);
    $("idle").hidden = cards.size > 0;
  }

  function addHistory(kind, icon, title, text, extra) {
    const item = h("section", { class: "card result" },
      h("div", { class: `outcome ${kind}` },
        h("div", { class: "icon", "aria-hidden": "true", text: icon }),
        h("div", {}, h("div", { class: "title", text: title }), h("div", { class: "small muted", text: text }))),
      extra || null);
    const history = $("history");
    history.prepend(item);
    while (history.children.length > 3) history.lastElementChild.remove();
  }

  function tickExpiry() {
    for (const [id, card] of cards) {
      const left = Math.round((Date.parse(card.session.expiresAt) - Date.now()) / 1000);
      const el = card.el.querySelector(".expiry");
      if (left <= 0 && !card.busy) {
        conclude(id, "warn", "◷", "Request expired", `${card.session.serviceName}: nobody answered in time.`);
        continue;
      }
      el.textContent = `${Math.floor(Math.max(0, left) / 60)}:${String(Math.max(0, left) % 60).padStart(2, "0")}`;
    }
  }

  // ---------------------------------------------------------------- start-up
  async function init() {
    $("enroll-form").addEventListener("submit", enroll);
    $("forget-button").addEventListener("click", forget);
    setInterval(tickExpiry, 1000);
    if (!window.isSecureContext || !window.crypto || !crypto.subtle || !window.indexedDB) {
      $("unsupported").hidden = false;
      $("unsupported-text").textContent =
        "The device key is made with WebCrypto, which browsers offer only on secure pages. Open this page over https://, or on http://localhost or http://127.0.0.1.";
      setConn("bad", "Unsupported");
      return;
    }
    try {
      config = await api("/demo/api/config");
    } catch (e) {
      /* labels fall back to scope names */
    }
    const id = config.defaultIdentity || {};
    $("given-name").value = id.givenName || "";
    $("family-name").value = id.familyName || "";
    $("birthdate").value = id.birthdate || "";
    $("nationality").value = id.nationality || "";
    $("email").value = id.email || "";
    try {
      phone = JSON.parse(localStorage.getItem(STATE_KEY) || "null");
      keys = phone ? await loadKeys() : null;
    } catch (e) {
      phone = null;
      keys = null;
    }
    if (phone && keys && keys.privateKey) {
      showHome();
    } else {
      phone = null;
      showEnroll("");
    }
  }

  init();
})();
