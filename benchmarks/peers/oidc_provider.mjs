// panva's oidc-provider as a client-credentials server issuing ES256 JWT access tokens (resource indicators),
// in one process or a node:cluster of WORKERS processes. Configured from the environment by peers.py.
import cluster from "node:cluster";
import Provider from "oidc-provider";

const port = Number(process.env.PORT);
const workers = Number(process.env.WORKERS || "1");
const audience = process.env.AUDIENCE;

function serve() {
  const provider = new Provider(`http://127.0.0.1:${port}`, {
    clients: [{
      client_id: process.env.CLIENT_ID,
      client_secret: process.env.CLIENT_SECRET,
      grant_types: ["client_credentials"],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: "client_secret_basic",
      id_token_signed_response_alg: "ES256",
    }],
    jwks: { keys: [JSON.parse(process.env.SIGNING_JWK)] },
    features: {
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => audience,
        useGrantedResource: () => true,
        getResourceServerInfo: () => ({
          scope: "read",
          audience,
          accessTokenTTL: 3600,
          accessTokenFormat: "jwt",
          jwt: { sign: { alg: "ES256" } },
        }),
      },
    },
  });
  provider.listen(port, "127.0.0.1");
}

if (workers > 1 && cluster.isPrimary) {
  for (let i = 0; i < workers; i++) cluster.fork();
} else {
  serve();
}
