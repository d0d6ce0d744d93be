// DPoP (RFC 9449) through panva's oauth4webapi, an independent OAuth client: a DPoP key, a client-credentials
// grant that meets the server's use_dpop_nonce challenge, a call to a client_lib-protected service with the
// bound token, and what a thief can try: the token as Bearer, as DPoP without a proof, with a proof captured
// for another URL, and with a proof captured for another method. Reads ISSUER, SERVICE, AUDIENCE and SECRET;
// prints one JSON object of outcomes (never a token).
import * as oauth from 'oauth4webapi';

const env = process.env;
const insecure = { [oauth.allowInsecureRequests]: true };  // loopback http in the test suite
const issuer = new URL(env.ISSUER);
const as = await oauth.processDiscoveryResponse(issuer, await oauth.discoveryRequest(issuer, { algorithm: 'oauth2', ...insecure }));
const client = { client_id: 'interop' };
const DPoP = oauth.DPoP(client, await oauth.generateKeyPair('ES256'));

const grant = () => oauth.clientCredentialsGrantRequest(as, client, oauth.ClientSecretBasic(env.SECRET), { audience: env.AUDIENCE }, { DPoP, ...insecure });
let nonceRetried = false;
let tokens;
try {
  tokens = await oauth.processClientCredentialsResponse(as, client, await grant());
} catch (err) {
  if (!oauth.isDPoPNonceError(err)) throw err;
  nonceRetried = true;
  tokens = await oauth.processClientCredentialsResponse(as, client, await grant());
}

// Proofs oauth4webapi makes for other requests, captured on the way out and never sent.
const captured = {};
const capture = (name) => ({
  [oauth.customFetch]: async (url, init) => { captured[name] = new Headers(init.headers).get('dpop'); return new Response('{}', { status: 200 }); },
});
const invoices = new URL(env.SERVICE + '/invoices?page=2');
await oauth.protectedResourceRequest(tokens.access_token, 'GET', new URL(env.SERVICE + '/elsewhere'), new Headers(), null, { DPoP, ...insecure, ...capture('otherUrl') });
await oauth.protectedResourceRequest(tokens.access_token, 'POST', invoices, new Headers(), null, { DPoP, ...insecure, ...capture('otherMethod') });

const ok = await oauth.protectedResourceRequest(tokens.access_token, 'GET', invoices, new Headers(), null, { DPoP, ...insecure });
const okBody = await ok.json();

const attempt = async (headers) => {
  const response = await fetch(invoices, { headers });
  return { status: response.status, challenge: response.headers.get('www-authenticate') };
};
const stolen = {
  asBearer: await attempt({ authorization: `Bearer ${tokens.access_token}` }),
  withoutProof: await attempt({ authorization: `DPoP ${tokens.access_token}` }),
  proofForOtherUrl: await attempt({ authorization: `DPoP ${tokens.access_token}`, dpop: captured.otherUrl }),
  proofForOtherMethod: await attempt({ authorization: `DPoP ${tokens.access_token}`, dpop: captured.otherMethod }),
};

console.log(JSON.stringify({
  token_type: tokens.token_type,
  nonce_retried: nonceRetried,
  jkt: await DPoP.calculateThumbprint(),
  dpop_algs: as.dpop_signing_alg_values_supported,
  resource: { status: ok.status, cnf: okBody.cnf, sub: okBody.sub },
  stolen,
}));
