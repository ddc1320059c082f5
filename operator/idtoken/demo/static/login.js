// The relying-party page: pick a service and scopes, start a login through this site's
// backend (/demo/api/login calls /auth/initiate), show the code, listen on the operator's
// WebSocket as the IDToken quick start does, and let the backend verify the JWT.
"use strict";

(() => {
  const TOKEN_KEY = "idtoken-demo:tokenId";
  const $ = (id) => document.getElementById(id);

  const CLAIM_LABELS = {
    tokenId: "Token ID",
    givenName: "Given name",
    familyName: "Family name",
    dateOfBirth: "Date of birth",
    nationality: "Nationality",
    documentNumber: "Document number",
    documentType: "Document type",
    documentExpiry: "Document expiry",
    trustLevel: "Trust level",
    age_over_18: "Over 18",
    age_over_21: "Over 21",
    age_over_25: "Over 25",
    ageRange: "Age range",
    isEuCitizen: "EU citizen",
    nameInitial: "Initials",
    email: "Email",
    phoneNumber: "Phone number",
  };
  const TRUST_TEXT = {
    1: "Identity asserted by an integration server's signed token.",
    2: "Identity document scanned (MRZ verified) with a face match.",
    3: "Document chip read, every passive-authentication check passed, face match.",
  };
  const REASON_TEXT = {
    "User rejected": "The login was declined on the phone.",
    "Not me": "The phone's owner reported this login as not theirs. New logins for this token are paused for a while.",
    "Invalid OTP": "The code confirmed on the phone did not match this page.",
    "Too many attempts": "Too many wrong attempts: the login was stopped.",
  };

  let config = null;
  let current = null; // {login, ws, timer, done, retries}
  let tokenEdited = false;

  const { h } = window.demoDom; // dom.js, loaded first

  function show(section) {
    $("start-wrap").hidden = section !== "start";
    $("waiting-wrap").hidden = section !== "waiting";
    $("outcome-wrap").hidden = section !== "outcome";
  }

  function formError(message) {
    $("form-error").textContent = message || "";
    $("form-error").hidden = !message;
  }

  const api = (path, body) => window.demoDom.api(path, body, "The server cannot be reached.");

  // ---------------------------------------------------------------- the form
  function selectedService() {
    return config.services.find((s) => s.id === $("service").value);
  }

  function renderScopes() {
    const service = selectedService();
    const box = $("scopes");
    box.replaceChildren();
    if (!service) return;
    for (const scope of service.allowedScopes) {
      const info = config.scopes[scope] || { label: scope };
      const input = h("input", { type: "checkbox", name: "scope", value: scope });
      input.checked = service.defaultScopes.includes(scope);
      box.append(h("label", { class: "check" }, input, h("span", {}, info.label, h("small", { text: scope }))));
    }
    $("service-hint").textContent = service.otpMode === "typed"
      ? "Typed code: you type the code shown here into the phone."
      : "Code shown on the phone: you check that it matches this page.";
  }

  function prefillToken(force) {
    const stored = localStorage.getItem(TOKEN_KEY);
    const input = $("token-id");
    if (stored && (force || !tokenEdited || !input.value)) {
      input.value = stored;
      tokenEdited = false;
      $("token-hint").textContent = "Filled in from the phone enrolled in this browser.";
    }
  }

  async function startLogin(event) {
    event.preventDefault();
    formError("");
    const tokenId = $("token-id").value.trim();
    if (!/^[A-Za-z0-9._:@-]{1,128}$/.test(tokenId)) {
      formError("Enter the token ID of an enrolled phone (letters, digits and . _ : @ -).");
      $("token-id").focus();
      return;
    }
    const scopes = [...document.querySelectorAll('#scopes input[name="scope"]:checked')].map((i) => i.value);
    const button = $("login-button");
    button.disabled = true;
    try {
      const login = await api("/demo/api/login", { tokenId, serviceId: $("service").value, scopes });
      beginWaiting(login);
    } catch (e) {
      const hints = {
        unknown_token: " Enroll a phone first, or check the token ID.",
        too_many_requests: " Wait a moment, or approve or reject the pending requests on the phone.",
      };
      formError(e.message + (hints[e.code] || ""));
    } finally {
      button.disabled = false;
    }
  }

  // ---------------------------------------------------------------- waiting
  function renderCode(el, otp) {
    el.replaceChildren(h("span", { text: otp.slice(0, 3) }), h("span", { text: otp.slice(3) }));
    el.dataset.otp = otp;
    el.setAttribute("aria-label", otp.split("").join(" "));
  }

  function beginWaiting(login) {
    stop();
    current = { login, ws: null, timer: null, done: false, retries: 0 };
    const typed = login.otpMode === "typed";
    $("waiting-title").textContent = typed ? "Type this code on your phone" : "Approve on your phone";
    $("waiting-text").textContent = typed
      ? `Open the phone page: ${login.serviceName} asks you to sign in. Type the code below there, then approve.`
      : `Open the phone page: ${login.serviceName} asks you to sign in. Check that it shows the same code, then approve.`;
    $("code-label").textContent = typed ? "Type this code" : "Your phone shows";
    renderCode($("otp"), login.autoPassword);
    $("waiting-meta").replaceChildren(
      h("span", {}, "Service ", h("b", { text: login.serviceName })),
      h("span", {}, "Token ", h("b", { class: "mono", text: $("token-id").value.trim() })),
      h("span", {}, "Asks for ", h("b", { text: login.scopes.map((s) => (config.scopes[s] || {}).label || s).join(", ") || "defaults" })),
    );
    tick();
    current.timer = setInterval(tick, 500);
    show("waiting");
    connect();
  }

  function tick() {
    if (!current) return;
    const left = Math.max(0, Math.round((Date.parse(current.login.expiresAt) - Date.now()) / 1000));
    $("countdown").textContent = `${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")}`;
  }

  function connect() {
    const state = current;
    const { sessionId, wsToken } = state.login;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(
      `${scheme}://${location.host}/ws/session/${encodeURIComponent(sessionId)}?token=${encodeURIComponent(wsToken)}`
    );
    state.ws = ws;
    ws.addEventListener("message", (event) => {
      if (current !== state) return;
      let message;
      try { message = JSON.parse(event.data); } catch (e) { return; }
      switch (message.type) {
        case "otp_ready":
          break;
        case "approved":
          finish();
          ws.close();
          verify(state.login, message);
          break;
        case "rejected":
          finish();
          ws.close();
          showOutcome("bad", "✕", "Login rejected", message.reason, REASON_TEXT[message.reason] || "");
          break;
        case "expired":
          finish();
          ws.close();
          showOutcome("warn", "◷", "The code expired", "", "Nobody approved the login in time. Start again to get a new code.");
          break;
      }
    });
    ws.addEventListener("close", (event) => {
      if (current !== state || state.done) return;
      if (event.code === 4009) {
        finish();
        showOutcome("warn", "!", "Opened elsewhere", "", "This login is now followed by another tab or window.");
      } else if (event.code === 4001 || event.code === 4004) {
        finish();
        showOutcome("bad", "!", "Login not found", "", "The operator does not know this login any more.");
      } else if (state.retries < 5) {
        state.retries += 1; // the operator keeps the result: a new socket still receives it
        setTimeout(() => { if (current === state && !state.done) connect(); }, 1000 * state.retries);
      } else {
        finish();
        showOutcome("bad", "!", "Connection lost", "", "The connection to the operator was lost.");
      }
    });
  }

  function finish() {
    if (!current) return;
    current.done = true;
    clearInterval(current.timer);
  }

  function stop() {
    if (!current) return;
    finish();
    if (current.ws && current.ws.readyState <= 1) current.ws.close();
    current = null;
  }

  // ---------------------------------------------------------------- outcome
  function showOutcome(kind, icon, title, reason, text) {
    $("outcome-state").className = `state ${kind}`;
    $("outcome-icon").textContent = icon;
    $("status-title").textContent = title;
    const p = $("status-text");
    p.replaceChildren();
    if (reason) p.append(h("span", { class: "reason", id: "reject-reason", text: reason }), h("br"));
    if (text) p.append(text);
    $("signed-in").hidden = kind !== "ok";
    $("outcome-wrap").className = kind === "ok" ? "" : "column";
    $("again-button").textContent = kind === "ok" ? "Log out" : "Start again";
    show("outcome");
    $("again-button").focus({ preventScroll: true });
  }

  async function verify(login, message) {
    showOutcome("wait", "…", "Verifying…", "", "The site's backend checks the result's hash and the JWT's signature against the operator's JWKS.");
    $("outcome-state").querySelector(".icon").replaceChildren(h("span", { class: "spinner" }));
    try {
      const result = await api("/demo/api/verify", {
        serviceId: login.serviceId,
        sessionId: login.sessionId,
        wsToken: login.wsToken,
        jwt: message.jwt,
        hash: message.hash,
        random: message.random,
      });
      renderSignedIn(result, message.jwt);
    } catch (e) {
      showOutcome("bad", "!", "Verification failed", "", e.message);
    }
  }

  function claimValue(value) {
    if (value === true) return "Yes";
    if (value === false) return "No";
    return String(value);
  }

  function renderSignedIn(result, jwt) {
    const claims = result.claims || {};
    const name = [claims.givenName, claims.familyName].filter(Boolean).join(" ");
    const exp = new Date(result.payload.exp * 1000);
    showOutcome(
      "ok", "✓", "Signed in",
      "",
      `${name ? `Welcome, ${name}. ` : ""}The JWT's signature, issuer, audience, expiry and session were verified by this site's backend. It is valid until ${exp.toLocaleTimeString()}.`
    );
    const table = $("claims");
    table.replaceChildren();
    const keys = Object.keys(claims);
    for (const key of keys) {
      table.append(h("tr", {},
        h("th", {}, CLAIM_LABELS[key] || key, h("small", { text: key })),
        h("td", { text: claimValue(claims[key]) })));
    }
    if (keys.length <= 1) {
      table.append(h("tr", {}, h("td", { colspan: "2", class: "muted", text: "No identity claim was shared beyond the token ID." })));
    }
    const level = result.trustLevel;
    const badge = h("div", { class: level ? "level" : "level none", text: level ? String(level) : "–" });
    $("trust").replaceChildren(badge, h("div", {},
      h("div", { class: "title", text: level ? `Trust level ${level}` : "Trust level not shared" }),
      h("div", { class: "small muted", text: level ? TRUST_TEXT[level] || "" : "Request the identity:trust_level scope to learn how the identity was proven." })));
    $("jwt-header").textContent = JSON.stringify(result.header, null, 2);
    $("jwt-payload").textContent = JSON.stringify(result.payload, null, 2);
    $("jwt-raw").textContent = jwt;
  }

  // ---------------------------------------------------------------- start-up
  async function init() {
    $("login-form").addEventListener("submit", startLogin);
    $("cancel-button").addEventListener("click", () => { stop(); show("start"); });
    $("again-button").addEventListener("click", () => { stop(); show("start"); $("token-id").focus(); });
    $("service").addEventListener("change", renderScopes);
    $("token-id").addEventListener("input", () => { tokenEdited = true; });
    window.addEventListener("storage", (e) => { if (e.key === TOKEN_KEY) prefillToken(false); });
    show("start");
    try {
      config = await api("/demo/api/config");
    } catch (e) {
      formError(`The demo configuration cannot be loaded: ${e.message}`);
      return;
    }
    const select = $("service");
    for (const s of config.services) {
      select.append(h("option", { value: s.id, text: `${s.name} (${s.otpMode === "typed" ? "typed code" : "code on phone"})` }));
    }
    renderScopes();
    prefillToken(true);
  }

  init();
})();
