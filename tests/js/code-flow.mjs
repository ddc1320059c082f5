// A relying party built on openid-client: the authorization code flow with PKCE, step by step,
// driven by tests/test_oidc_clients.py.
//
//   node code-flow.mjs '<settings JSON>'
//
// settings: {issuer, clientId, clientSecret (or null), auth: "basic" | "post" | "none",
//            redirectUri, scope, route: {"/path": "http://127.0.0.1:PORT", ...}}
//
// It prints one JSON line per step on stdout:
//   {"step": "authorize", "url": ...}   then reads the callback URL from stdin (one line)
//   {"step": "done", "token": ..., "claims": ..., "userinfo": ..., "replay": ..., "sent": ...}
//   {"step": "error", "name": ..., "code": ..., "error": ..., "message": ...}  (exit status 1)
//
// `route` plays the load balancer: a request for one of its paths on the issuer's origin is
// sent to the instance named there instead (the token endpoint on one instance, userinfo on
// another). Nothing else about the client's requests changes. "sent" lists the requests made
// after discovery: method, URL, the Authorization scheme and the form's parameter names.
import * as client from "openid-client";
import { createInterface } from "node:readline";
import { failure, routed, say, tokenSummary } from "./support.mjs";

const settings = JSON.parse(process.argv[2]);
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

function clientAuth() {
  switch (settings.auth) {
    case "basic":
      return client.ClientSecretBasic(settings.clientSecret);
    case "post":
      return client.ClientSecretPost(settings.clientSecret);
    case "none":
      return client.None();
    default:
      throw new Error(`unknown auth ${settings.auth}`);
  }
}

async function main() {
  const config = await client.discovery(
    new URL(settings.issuer),
    settings.clientId,
    settings.auth === "none" ? { token_endpoint_auth_method: "none" } : undefined,
    clientAuth(),
    // Loopback HTTP here, so the ID token's signature is checked too (against the JWKS), not
    // only its claims as openid-client does over TLS by default.
    { execute: [client.allowInsecureRequests, client.enableNonRepudiationChecks], timeout: 60 },
  );
  config.timeout = 60;
  const sent = [];
  config[client.customFetch] = (url, options) => {
    const to = routed(settings, url);
    const authorization = options.headers.authorization;
    sent.push({
      method: options.method,
      url: to,
      auth: authorization === undefined ? null : authorization.split(" ")[0],
      form: options.body instanceof URLSearchParams ? [...options.body.keys()].sort() : null,
    });
    return fetch(to, options);
  };

  const codeVerifier = client.randomPKCECodeVerifier();
  const codeChallenge = await client.calculatePKCECodeChallenge(codeVerifier);
  const state = client.randomState();
  const nonce = client.randomNonce();
  const url = client.buildAuthorizationUrl(config, {
    redirect_uri: settings.redirectUri,
    scope: settings.scope,
    code_challenge: codeChallenge,
    code_challenge_method: "S256",
    state,
    nonce,
  });
  say({ step: "authorize", url: url.href });

  const { value: callback, done } = await lines.next();
  if (done) throw new Error("no callback URL on stdin");
  const checks = {
    pkceCodeVerifier: codeVerifier,
    expectedState: state,
    expectedNonce: nonce,
    idTokenExpected: true,
  };
  const tokens = await client.authorizationCodeGrant(config, new URL(callback.trim()), checks);
  const claims = tokens.claims();
  const userinfo = await client.fetchUserInfo(config, tokens.access_token, claims.sub);

  // The same callback again: the code is single use.
  let replay;
  try {
    await client.authorizationCodeGrant(config, new URL(callback.trim()), checks);
    replay = { step: "accepted" };
  } catch (err) {
    replay = failure("error", err);
  }
  say({
    step: "done",
    token: tokenSummary(tokens),
    claims,
    userinfo,
    replay,
    sent,
  });
}

try {
  await main();
} catch (err) {
  say(failure("error", err));
  process.exitCode = 1;
} finally {
  process.stdin.destroy();
}
