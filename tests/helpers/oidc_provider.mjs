// An OpenID Connect provider for the tests: panva's certified `oidc-provider`,
// configured like an HPC centre's identity provider (Unity-IdM, Helmholtz AAI):
// entitlements and groups in the claims, refresh tokens, revocation and
// introspection. Started by tests/helpers/oidc.py with one JSON config file:
//
//   node oidc_provider.mjs config.json
//
// config: {issuer, port, provider_module (file URL of oidc-provider's entry, as ESM
//          imports ignore NODE_PATH), users_file, registration_token, cookie_keys,
//          access_token_ttl, refresh_token_ttl, rotate_refresh_tokens}
// users_file (read again at every use, so tests may change it while we run):
//   {"alice": {"password": "...", "claims": {...},
//              "access_token_ttl": 5, "refresh_token_ttl": 60}}
//
// Scopes and the claims they release (at the userinfo endpoint and in ID tokens):
//   openid: sub; profile: name, preferred_username; email: email, email_verified;
//   eduperson_entitlement: eduperson_entitlement, groups (as Helmholtz AAI does).
import crypto from "node:crypto";
import fs from "node:fs";
import http from "node:http";

const cfg = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const { default: Provider, errors } = await import(cfg.provider_module);

function users() {
  return JSON.parse(fs.readFileSync(cfg.users_file, "utf8"));
}

// the user's own lifetime from the users file, else the provider's default
function ttlOf(kind, fallback) {
  return (_ctx, token) => {
    const user = (token.accountId && users()[token.accountId]) || {};
    return user[kind] ?? fallback;
  };
}

// Storage for the provider's life: a Map with expiry. (The package's quick-start
// adapter is an LRU of 1000 entries, which a long test session could overflow.)
const store = new Map(); // key -> {value, expiresAt (ms, 0: never)}
const grantMembers = new Map(); // grantId -> keys of the tokens it issued
const GRANTABLE = new Set(["AccessToken", "AuthorizationCode", "RefreshToken", "DeviceCode"]);

function load(key) {
  const entry = store.get(key);
  if (entry && entry.expiresAt && entry.expiresAt <= Date.now()) {
    store.delete(key);
    return undefined;
  }
  return entry?.value;
}

function keep(key, value, expiresIn) {
  store.set(key, { value, expiresAt: expiresIn ? Date.now() + expiresIn * 1000 : 0 });
}

class MapAdapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    keep(key, payload, expiresIn);
    if (GRANTABLE.has(this.model) && payload.grantId) {
      if (!grantMembers.has(payload.grantId)) grantMembers.set(payload.grantId, new Set());
      grantMembers.get(payload.grantId).add(key);
    }
    if (this.model === "Session") keep(`sessionUid:${payload.uid}`, id, expiresIn);
    if (payload.userCode) keep(`userCode:${payload.userCode}`, id, expiresIn);
  }

  async find(id) {
    return load(this.key(id));
  }

  async findByUid(uid) {
    const id = load(`sessionUid:${uid}`);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode(userCode) {
    const id = load(`userCode:${userCode}`);
    return id === undefined ? undefined : this.find(id);
  }

  async consume(id) {
    const payload = load(this.key(id));
    if (payload) payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    store.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    for (const key of grantMembers.get(grantId) ?? []) store.delete(key);
    grantMembers.delete(grantId);
  }
}

setInterval(() => {
  const now = Date.now();
  for (const [key, entry] of store) if (entry.expiresAt && entry.expiresAt <= now) store.delete(key);
  for (const [grantId, keys] of grantMembers) {
    for (const key of keys) if (!store.has(key)) keys.delete(key);
    if (keys.size === 0) grantMembers.delete(grantId);
  }
}, 60_000).unref();

// grants what the request asks for (its OIDC scopes and claims): the hub is the
// site's own client, so there is no consent page
function grantAll(grant, scopes, claims) {
  if (scopes.length) grant.addOIDCScope(scopes.join(" "));
  if (claims.length) grant.addOIDCClaims(claims);
}

const { privateKey } = crypto.generateKeyPairSync("rsa", { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: "jwk" }), kid: "tests", use: "sig", alg: "RS256" };

const configuration = {
  adapter: MapAdapter,
  jwks: { keys: [signingKey] },
  // plain http on 127.0.0.1: SameSite=Lax and no Secure flag (what the package does
  // on a plain-http request; spelled out as the tests depend on it)
  cookies: {
    keys: cfg.cookie_keys,
    long: { httpOnly: true, sameSite: "lax" },
    short: { httpOnly: true, sameSite: "lax" },
  },
  features: {
    devInteractions: { enabled: false },
    claimsParameter: { enabled: true },
    registration: { enabled: true, initialAccessToken: cfg.registration_token },
    // a client revokes only its own tokens; a confidential one (the hub, a resource
    // server) may introspect any token
    revocation: {
      enabled: true,
      allowedPolicy(_ctx, client, token) {
        if (token.clientId === client.clientId) return true;
        throw new errors.InvalidRequest("client is not authorized to revoke the presented token");
      },
    },
    introspection: {
      enabled: true,
      allowedPolicy: (_ctx, client, token) =>
        client.clientAuthMethod !== "none" || token.clientId === client.clientId,
    },
    userinfo: { enabled: true },
  },
  scopes: ["openid", "offline_access", "profile", "email", "eduperson_entitlement"],
  claims: {
    openid: ["sub"],
    profile: ["name", "preferred_username"],
    email: ["email", "email_verified"],
    eduperson_entitlement: ["eduperson_entitlement", "groups"],
  },
  // the scope claims also go into the ID token, as Unity-IdM and Keycloak do
  conformIdTokenClaims: false,
  async findAccount(_ctx, id) {
    const user = users()[id];
    if (!user) return undefined;
    return {
      accountId: id,
      async claims() {
        // sub is the account's name; preferred_username too unless the claims say otherwise
        return { preferred_username: id, ...(user.claims || {}), sub: id };
      },
    };
  },
  // a refresh token for every client allowed the grant (as Unity-IdM does), not only
  // with offline_access and prompt=consent; it lives its own TTL, not the session's
  async issueRefreshToken(_ctx, client) {
    return client.grantTypeAllowed("refresh_token");
  },
  async expiresWithSession() {
    return false;
  },
  rotateRefreshToken: Boolean(cfg.rotate_refresh_tokens),
  // PKCE is checked when a client sends it, required of none (confidential clients)
  pkce: { required: () => false },
  ttl: {
    AccessToken: ttlOf("access_token_ttl", cfg.access_token_ttl),
    RefreshToken: ttlOf("refresh_token_ttl", cfg.refresh_token_ttl),
    AuthorizationCode: 60,
    IdToken: 3600,
    Interaction: 600,
    Session: 86400,
    Grant: Math.max(86400 * 14, cfg.refresh_token_ttl),
  },
  async loadExistingGrant(ctx) {
    const { oidc } = ctx;
    const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
    let grant = grantId ? await oidc.provider.Grant.find(grantId) : undefined;
    if (!grant) {
      grant = new oidc.provider.Grant({ clientId: oidc.client.clientId, accountId: oidc.session.accountId });
    }
    grantAll(grant, [...oidc.requestParamOIDCScopes], [...oidc.requestParamClaims]);
    await grant.save();
    return grant;
  },
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  renderError(ctx, out) {
    ctx.type = "text/plain";
    ctx.body = `${out.error}: ${out.error_description || ""}`;
  },
};

const provider = new Provider(cfg.issuer, configuration);

// errors a test author needs to see (no tokens in them); the rest stays quiet
provider.on("server_error", (_ctx, err) => console.error(`server error: ${err.stack || err}`));
for (const event of [
  "authorization.error",
  "grant.error",
  "registration_create.error",
  "userinfo.error",
  "revocation.error",
  "introspection.error",
]) {
  provider.on(event, (_ctx, err) => {
    const detail = err.error_detail ? ` (${err.error_detail})` : "";
    console.error(`${event}: ${err.error || err.name}: ${err.error_description || err.message}${detail}`);
  });
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function loginPage(res, uid, status, message) {
  res.statusCode = status;
  res.setHeader("Content-Type", "text/html; charset=utf-8");
  res.setHeader("Cache-Control", "no-store");
  res.end(`<!doctype html><title>Log in</title><h1>Test identity provider</h1>
<p class="message">${escapeHtml(message)}</p>
<form method="post" action="/interaction/${escapeHtml(uid)}/login">
<label>User name <input name="username" autofocus></label>
<label>Password <input name="password" type="password"></label>
<button type="submit">Log in</button></form>`);
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 65536) throw Object.assign(new Error("form too large"), { statusCode: 413 });
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString("utf8"));
}

function samePassword(given, expected) {
  const a = crypto.createHash("sha256").update(String(given)).digest();
  const b = crypto.createHash("sha256").update(String(expected)).digest();
  return crypto.timingSafeEqual(a, b);
}

async function interaction(req, res, login) {
  const details = await provider.interactionDetails(req, res);
  if (details.prompt.name === "consent") {
    // loadExistingGrant grants what is asked; a consent prompt left over is finished here
    const { missingOIDCScope = [], missingOIDCClaims = [] } = details.prompt.details;
    let grant = details.grantId ? await provider.Grant.find(details.grantId) : undefined;
    grant ||= new provider.Grant({ clientId: details.params.client_id, accountId: details.session.accountId });
    grantAll(grant, missingOIDCScope, missingOIDCClaims);
    const grantId = await grant.save();
    await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    return;
  }
  if (!login || req.method !== "POST") {
    loginPage(res, details.uid, 200, "Log in with your test account.");
    return;
  }
  const form = await readForm(req);
  const name = form.get("username") || "";
  const user = Object.hasOwn(users(), name) ? users()[name] : undefined;
  if (!user || !samePassword(form.get("password") || "", user.password)) {
    loginPage(res, details.uid, 401, "Wrong user name or password.");
    return;
  }
  await provider.interactionFinished(req, res, { login: { accountId: name } }, { mergeWithLastSubmission: false });
}

const callback = provider.callback();
const server = http.createServer((req, res) => {
  const match = new URL(req.url, cfg.issuer).pathname.match(/^\/interaction\/([A-Za-z0-9_-]+)(\/login)?$/);
  if (!match) {
    callback(req, res);
    return;
  }
  interaction(req, res, Boolean(match[2])).catch((err) => {
    const status = err.statusCode || 500;
    console.error(`interaction failed: ${status >= 500 ? err.stack : `${err.name}: ${err.message}`}`);
    let text = "The login failed: start it again from the application.";
    if (err.name === "SessionNotFound") text = "This login has expired or is unknown: start it again from the application.";
    if (!res.headersSent) {
      res.statusCode = status;
      res.setHeader("Content-Type", "text/plain; charset=utf-8");
    }
    res.end(text);
  });
});

server.listen(cfg.port, "127.0.0.1", () => {
  console.log(`oidc-provider listening on ${cfg.issuer}`);
});

// all state is in memory: nothing to save, and open keep-alive connections must not
// hold the exit up
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => process.exit(0));
}
