// What the scripts in tests/js share: their output, the load balancer's routing and how an
// error is reported.

// One JSON line on stdout: a step of the script.
export function say(message) {
  process.stdout.write(JSON.stringify(message) + "\n");
}

// `url` as the load balancer sends it: a request for one of `route`'s paths on the issuer's
// origin goes to the instance named there instead; nothing else about it changes.
export function routed({ issuer, route }, url) {
  const target = new URL(url);
  const instance = route[target.pathname];
  if (target.origin === new URL(issuer).origin && instance !== undefined) {
    const to = new URL(instance);
    target.protocol = to.protocol;
    target.host = to.host;
  }
  return target.href;
}

// An error of openid-client (or any other) as the step `step` reports it.
export function failure(step, err) {
  return {
    step,
    name: err?.name,
    code: err?.code,
    error: err?.error ?? err?.cause?.error,
    description: err?.error_description ?? err?.cause?.error_description,
    message: String(err?.message ?? err),
  };
}

// What a test checks of a token response beyond its ID token: the members, not the tokens.
export function tokenSummary(tokens) {
  return {
    token_type: tokens.token_type,
    scope: tokens.scope,
    expires_in: tokens.expires_in,
    has_access_token: typeof tokens.access_token === "string",
    has_refresh_token: "refresh_token" in tokens,
  };
}
