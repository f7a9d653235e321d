// A componentize-js guest (StarlingMonkey): the web's fetch-event API, no handoff code.
// Answers with its method, path and the size of the request body it read, and a header
// naming its toolchain.
addEventListener('fetch', (event) => event.respondWith(handle(event.request)));

async function handle(request) {
  const url = new URL(request.url);
  const body = await request.text();
  return new Response(`js ${request.method} ${url.pathname} ${body.length}\n`, {
    headers: { 'content-type': 'text/plain', 'x-guest': 'componentize-js' },
  });
}
