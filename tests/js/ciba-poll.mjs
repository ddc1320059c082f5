// A CIBA client built on openid-client: a backchannel authentication request in poll mode,
// driven by tests/test_ciba_clients.py.
//
//   node ciba-poll.mjs '<settings JSON>'
//
// settings: {issuer, clientId, clientSecret, scope, loginHint, bindingMessage,
//            route: {"/path": "http://127.0.0.1:PORT", ...}}
//
// It authenticates with client_secret_basic and prints one JSON line per step on stdout:
//   {"step": "started", "auth_req_id": ..., "expires_in": ..., "interval": ...}
//   {"step": "tokens", "token": ..., "claims": ..., "userinfo": ...}   the user approved, or
//   {"step": "refused", "name": ..., "error": ..., ...}                the poll ended in an error
//   {"step": "replay", "name": ..., "error": ..., ...}   after "tokens": the same auth_req_id again
//   {"step": "done"}
//   {"step": "error", "name": ..., "code": ..., "error": ..., "message": ...}  (exit status 1)
// and, as each answer arrives, a line for every request made after discovery:
//   {"step": "sent", "method", "url", "auth" (the Authorization scheme), "form" (the form's
//    parameter names), "at" (when it was sent: seconds, monotonic), "status", "error"}
//
// The polls are openid-client's own: pollBackchannelAuthenticationGrant waits `interval`
// seconds before each one and honours slow_down. `route` plays the load balancer (support.mjs).
import * as client from "openid-client";
import { performance } from "node:perf_hooks";
import { failure, routed, say, tokenSummary } from "./support.mjs";

const settings = JSON.parse(process.argv[2]);

async function answerOf(response) {
  if (!(response.headers.get("content-type") ?? "").startsWith("application/json")) return null;
  const body = await response.clone().json();
  return typeof body?.error === "string" ? body.error : null;
}

async function main() {
  const config = await client.discovery(
    new URL(settings.issuer),
    settings.clientId,
    undefined,
    client.ClientSecretBasic(settings.clientSecret),
    // Loopback HTTP here, so the ID token's signature is checked too (against the JWKS), not
    // only its claims as openid-client does over TLS by default.
    { execute: [client.allowInsecureRequests, client.enableNonRepudiationChecks], timeout: 60 },
  );
  config.timeout = 60;
  config[client.customFetch] = async (url, options) => {
    const to = routed(settings, url);
    const authorization = options.headers.authorization;
    const request = {
      step: "sent",
      method: options.method,
      url: to,
      auth: authorization === undefined ? null : authorization.split(" ")[0],
      form: options.body instanceof URLSearchParams ? [...options.body.keys()].sort() : null,
      at: performance.now() / 1000,
    };
    const response = await fetch(to, options);
    request.status = response.status;
    request.error = await answerOf(response);
    say(request);
    return response;
  };

  const started = await client.initiateBackchannelAuthentication(config, {
    scope: settings.scope,
    login_hint: settings.loginHint,
    binding_message: settings.bindingMessage,
  });
  say({
    step: "started",
    auth_req_id: started.auth_req_id,
    expires_in: started.expires_in,
    interval: started.interval,
  });

  let tokens;
  try {
    tokens = await client.pollBackchannelAuthenticationGrant(config, started);
  } catch (err) {
    say(failure("refused", err));
  }
  if (tokens !== undefined) {
    const claims = tokens.claims();
    const userinfo = await client.fetchUserInfo(config, tokens.access_token, claims.sub);
    say({
      step: "tokens",
      token: tokenSummary(tokens),
      claims,
      userinfo,
    });
    // The same auth_req_id again: its tokens were handed out.
    try {
      await client.pollBackchannelAuthenticationGrant(config, started);
      say({ step: "replay", accepted: true });
    } catch (err) {
      say(failure("replay", err));
    }
  }
  say({ step: "done" });
}

try {
  await main();
} catch (err) {
  say(failure("error", err));
  process.exitCode = 1;
}
