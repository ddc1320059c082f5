// The hosted login page (see operator/idtoken/oidc/hosted.py): ask for the token ID, start
// the session, show the code, wait on the session's WebSocket and, once the phone has
// answered, let the operator send the browser back to the site. No third-party code.
"use strict";

(function () {
  const config = JSON.parse(document.getElementById("login-config").textContent);
  if (!config.handle) return; // an error page
  const $ = (id) => document.getElementById(id);
  const form = $("start"), tokenInput = $("token-id"), button = $("continue");
  const waiting = $("waiting"), codeBox = $("code"), status = $("status"), problem = $("problem");
  let session = null, closedByUs = false, retries = 0, expiry = null;

  function show(el, on) { el.hidden = !on; }
  function fail(message) {
    problem.textContent = message;
    show(problem, true);
    button.disabled = false;
  }

  function refused(message) { // the question again (it is hidden when login_hint gave it)
    show(form, true);
    fail(message);
  }

  async function start(tokenId) {
    show(problem, false);
    button.disabled = true;
    let response;
    try {
      response = await fetch("/authorize/session", {
        method: "POST",
        headers: {"Content-Type": "application/json"},
        body: JSON.stringify({handle: config.handle, tokenId: tokenId}),
        credentials: "omit",
      });
    } catch (e) {
      refused("The login service cannot be reached. Check your connection and try again.");
      return;
    }
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      refused(body.error_description || "The login could not be started.");
      return;
    }
    session = body;
    show(form, false);
    codeBox.textContent = body.autoPassword;
    status.textContent = config.otpMode === "typed"
      ? "Type this code on your phone to approve."
      : "Check that your phone shows the same code, then approve.";
    show(waiting, true);
    expiry = Date.parse(body.expiresAt);
    listen();
  }

  function listen() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${scheme}//${location.host}/ws/session/${encodeURIComponent(session.sessionId)}`
      + `?token=${encodeURIComponent(session.wsToken)}`;
    const socket = new WebSocket(url);
    socket.onmessage = (event) => {
      let message;
      try { message = JSON.parse(event.data); } catch (e) { return; }
      if (message.type === "otp_ready") { retries = 0; return; }
      if (["approved", "rejected", "expired"].includes(message.type)) {
        closedByUs = true;
        socket.close();
        status.textContent = message.type === "approved"
          ? "Approved. Taking you back to the site…" : "Taking you back to the site…";
        complete();
      }
    };
    socket.onclose = (event) => {
      if (closedByUs) return;
      if (event.code === 4009) { status.textContent = "This login continues in another tab."; return; }
      if (event.code === 4001 || event.code === 4004) { complete(); return; }
      // Lost connection: the decision is stored, so reconnecting still learns it.
      retries += 1;
      const late = expiry !== null && Date.now() > expiry + 300000;
      if (late) { complete(); return; }
      setTimeout(listen, Math.min(500 * 2 ** Math.min(retries, 4), 8000));
    };
  }

  async function complete() {
    for (let attempt = 0; attempt < 20; attempt += 1) {
      try {
        const response = await fetch("/authorize/complete", {
          method: "POST",
          headers: {"Content-Type": "application/json"},
          body: JSON.stringify({sessionId: session.sessionId, wsToken: session.wsToken}),
          credentials: "omit",
        });
        const body = await response.json().catch(() => ({}));
        if (response.ok && body.redirect) { location.replace(body.redirect); return; }
        if (response.status !== 409 && response.status !== 503) {
          fail(body.error_description || "The login could not be completed.");
          return;
        }
      } catch (e) { /* try again */ }
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
    fail("The login could not be completed. Start again from the site.");
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const tokenId = tokenInput.value.trim();
    if (!/^[A-Za-z0-9._:@-]{1,128}$/.test(tokenId)) {
      fail("Enter your token ID as your phone shows it.");
      return;
    }
    start(tokenId);
  });
  if (config.loginHint) start(config.loginHint);
})();
