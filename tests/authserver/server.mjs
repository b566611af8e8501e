// The authorization server falcon-oauth's integration tests talk to: oidc-provider, configured with
// the clients, scopes and accounts the tests use. Usage: node server.mjs PORT
//
// One extension: the grant type "urn:falcon-oauth:test:user" issues a user-bound access token for the
// account named in `sub`, through oidc-provider's own Grant and AccessToken models, so tests get a
// token that userinfo accepts without driving a browser login. Everything else is stock.
import Provider from 'oidc-provider';

const port = Number(process.argv[2] || 4000);
const issuer = `http://127.0.0.1:${port}`;

export const ACCOUNTS = {
  'user-42': { sub: 'user-42', email: 'ada@example.test', email_verified: true, name: 'Ada L.', preferred_username: 'ada' },
  'user-7': { sub: 'user-7', email: 'bob@example.test', email_verified: false, name: 'Bob', preferred_username: 'bob' },
};

const USER_GRANT = 'urn:falcon-oauth:test:user';

const configuration = {
  clients: [
    {
      // the plugin: it only introspects. Its secret holds every character RFC 6749 §2.3.1 must encode.
      client_id: 'mockforge',
      client_secret: 'p@ss:word+/= with space',
      grant_types: ['client_credentials'], // for pre-authorization: its own token for a protected introspection
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      client_id: 'mockforge-post',
      client_secret: 'post-secret',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_post',
    },
    {
      // the application whose users call MockForge: it obtains the tokens under test
      client_id: 'app',
      client_secret: 'app-secret',
      grant_types: ['client_credentials', USER_GRANT],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  scopes: ['openid', 'email', 'profile', 'read', 'write', 'orders:read', 'orders:write', 'admin', 'short'],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name', 'preferred_username'] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    userinfo: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // tokens for https://api.example.test carry it as their audience (still opaque, still introspectable);
      // tokens for https://jwt.example.test are JWTs
      defaultResource: () => undefined,
      getResourceServerInfo: (ctx, resource) => {
        if (resource === 'https://api.example.test') {
          return { scope: 'read write orders:read orders:write', audience: resource, accessTokenFormat: 'opaque' };
        }
        if (resource === 'https://jwt.example.test') {
          // RFC 9068 JWT access tokens (typ at+jwt), signed with the provider's keys, published at /jwks
          return { scope: 'read write admin', audience: resource, accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } };
        }
        throw new Provider.errors.InvalidTarget();
      },
    },
  },
  ttl: {
    // the scope "short" makes a token that expires in 2 seconds, for expiry tests
    ClientCredentials: (ctx, token) => (token.scope && token.scope.split(' ').includes('short') ? 2 : 600),
    AccessToken: (ctx, token) => (token.scope && token.scope.split(' ').includes('short') ? 2 : 600),
    Grant: 3600,
  },
  async findAccount(ctx, sub) {
    const account = ACCOUNTS[sub];
    if (!account) return undefined;
    return { accountId: sub, async claims() { return { ...account }; } };
  },
};

const provider = new Provider(issuer, configuration);

provider.registerGrantType(USER_GRANT, async (ctx) => {
  const { client, params } = ctx.oidc;
  const sub = params.sub;
  if (!ACCOUNTS[sub]) {
    throw new Provider.errors.InvalidGrant('unknown account');
  }
  const scope = params.scope || 'openid';
  const grant = new provider.Grant({ accountId: sub, clientId: client.clientId });
  grant.addOIDCScope(scope);
  const grantId = await grant.save();
  const token = new provider.AccessToken({ accountId: sub, client, grantId, scope, gty: USER_GRANT });
  const value = await token.save();
  ctx.body = { access_token: value, token_type: 'Bearer', expires_in: token.expiration, scope };
}, ['sub', 'scope']);

provider.listen(port, '127.0.0.1', () => {
  console.log(`READY ${issuer}`);
});
