// An OpenID Connect provider for the tests: panva's certified `oidc-provider`,
// configured like an HPC centre's identity provider (Unity-IdM, Helmholtz AAI):
// entitlements and groups in the claims, refresh tokens, revocation and
// introspection. Started by tests/helpers/oidc.py with one JSON config file:
//
//   node oidc_provider.mjs config.json
//
// config: {issuer, port, provider_module (file URL of oidc-provider), users_file,
//          registration_token, cookie_keys, access_token_ttl, refresh_token_ttl}
// users_file (read again at every use, so tests may change it while we run):
//   {"alice": {"password": "...", "claims": {...},
//              "access_token_ttl": 5, "refresh_token_ttl": 60}}
import crypto from "node:crypto";
import fs from "node:fs";
import http from "node:http";

const cfg = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const { default: Provider } = await import(cfg.provider_module);

function users() {
  return JSON.parse(fs.readFileSync(cfg.users_file, "utf8"));
}

function ttlOf(kind, fallback) {
  return (_ctx, token) => {
    const user = users()[token.accountId] || {};
    return user[kind] ?? fallback;
  };
}

const { privateKey } = crypto.generateKeyPairSync("rsa", { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: "jwk" }), kid: "tests", use: "sig", alg: "RS256" };

const configuration = {
  jwks: { keys: [signingKey] },
  cookies: { keys: cfg.cookie_keys },
  features: {
    devInteractions: { enabled: false },
    registration: { enabled: true, initialAccessToken: cfg.registration_token },
    revocation: { enabled: true },
    introspection: { enabled: true },
    userinfo: { enabled: true },
  },
  scopes: ["openid", "offline_access", "profile", "email", "eduperson_entitlement"],
  claims: {
    openid: ["sub"],
    profile: ["name", "preferred_username"],
    email: ["email"],
    // as Helmholtz AAI: entitlements (AARC-G069) and plain groups come with this scope
    eduperson_entitlement: ["eduperson_entitlement", "groups"],
  },
  async findAccount(_ctx, id) {
    const user = users()[id];
    if (!user) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: id, preferred_username: id, ...(user.claims || {}) };
      },
    };
  },
  // a refresh token for every client allowed the grant (as Unity-IdM does), not only
  // with prompt=consent; it lives its own TTL, not the browser session's
  async issueRefreshToken(_ctx, client) {
    return client.grantTypeAllowed("refresh_token");
  },
  async expiresWithSession() {
    return false;
  },
  rotateRefreshToken: () => true,
  pkce: { required: () => false },
  ttl: {
    AccessToken: ttlOf("access_token_ttl", cfg.access_token_ttl),
    RefreshToken: ttlOf("refresh_token_ttl", cfg.refresh_token_ttl),
    AuthorizationCode: 60,
    IdToken: 3600,
    Interaction: 600,
    Session: 86400,
    Grant: 86400 * 14,
  },
  // no consent page: the hub is the site's own client
  async loadExistingGrant(ctx) {
    const { oidc } = ctx;
    const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
    let grant = grantId ? await oidc.provider.Grant.find(grantId) : undefined;
    if (!grant) {
      grant = new oidc.provider.Grant({ clientId: oidc.client.clientId, accountId: oidc.session.accountId });
    }
    grant.addOIDCScope(String(oidc.params.scope || "openid"));
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
const callback = provider.callback();

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function loginPage(res, uid, status, message) {
  res.statusCode = status;
  res.setHeader("Content-Type", "text/html; charset=utf-8");
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
    if (size > 65536) throw new Error("form too large");
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
    const grant = new provider.Grant({ clientId: details.params.client_id, accountId: details.session.accountId });
    grant.addOIDCScope(String(details.params.scope || "openid"));
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
  const user = users()[name];
  if (!user || !samePassword(form.get("password") || "", user.password)) {
    loginPage(res, details.uid, 401, "Wrong user name or password.");
    return;
  }
  await provider.interactionFinished(req, res, { login: { accountId: name } }, { mergeWithLastSubmission: false });
}

const server = http.createServer((req, res) => {
  const match = new URL(req.url, cfg.issuer).pathname.match(/^\/interaction\/([A-Za-z0-9_-]+)(\/login)?$/);
  if (!match) {
    callback(req, res);
    return;
  }
  interaction(req, res, Boolean(match[2])).catch((err) => {
    console.error(`interaction failed: ${err.message}`);
    if (!res.headersSent) {
      res.statusCode = 400;
      res.setHeader("Content-Type", "text/plain");
    }
    res.end(`The login cannot go on: ${err.message}`);
  });
});

server.listen(cfg.port, "127.0.0.1", () => {
  console.log(`oidc-provider listening on ${cfg.issuer}`);
});

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
