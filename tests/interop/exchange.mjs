// Token exchange (RFC 8693) through panva's oauth4webapi, an independent OAuth client: discovery, A's
// client-credentials grant, B's exchange by the generic token endpoint request, a refused exchange, and C's
// RFC 9068 validation of the exchanged token. Reads ISSUER, B, C and the two secrets from the environment;
// prints one JSON object (claims and outcomes, never a token).
import * as oauth from 'oauth4webapi';

const env = process.env;
const insecure = { [oauth.allowInsecureRequests]: true };  // a loopback http issuer in the test suite
const issuer = new URL(env.ISSUER);
const as = await oauth.processDiscoveryResponse(issuer, await oauth.discoveryRequest(issuer, { algorithm: 'oauth2', ...insecure }));

const a = { client_id: 'svc-a' };
const first = await oauth.processClientCredentialsResponse(as, a, await oauth.clientCredentialsGrantRequest(
  as, a, oauth.ClientSecretBasic(env.A_SECRET), { audience: env.B, scope: 'invoices:read orders:read' }, insecure));

const b = { client_id: 'svc-b' };
const exchange = (audience, scope) => oauth.genericTokenEndpointRequest(as, b, oauth.ClientSecretBasic(env.B_SECRET),
  'urn:ietf:params:oauth:grant-type:token-exchange', {
    subject_token: first.access_token,
    subject_token_type: 'urn:ietf:params:oauth:token-type:access_token',
    audience,
    scope,
  }, insecure);
const exchanged = await oauth.processGenericTokenEndpointResponse(as, b, await exchange(env.C, 'invoices:read'));

let refusal = null;
try {
  await oauth.processGenericTokenEndpointResponse(as, b, await exchange('https://elsewhere.example', 'invoices:read'));
} catch (err) {
  refusal = err instanceof oauth.ResponseBodyError ? { error: err.error, status: err.status } : { other: String(err) };
}

const request = new Request(env.C + '/resource', { headers: { authorization: `Bearer ${exchanged.access_token}` } });
const claims = await oauth.validateJwtAccessToken(as, request, env.C, insecure);

console.log(JSON.stringify({
  grant_types: as.grant_types_supported,
  token_type: exchanged.token_type,
  issued_token_type: exchanged.issued_token_type,
  scope: exchanged.scope,
  expires_in: exchanged.expires_in,
  claims,
  refusal,
}));
