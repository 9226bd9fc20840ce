#!/usr/bin/env node
// A headless "browser" for OAuth tests: `node oauth_opener.mjs URL` GETs the authorization
// URL and follows its redirects, the last of which lands on mcpsm's 127.0.0.1 redirect
// listener. Set as MCPSM_OAUTH_OPENER="node /abs/oauth_opener.mjs"; mcpsm appends the URL.
// Exit 0 when the last response was 2xx, 1 otherwise (diagnostics on stderr).
const url = process.argv[process.argv.length - 1];
try {
  const response = await fetch(url, { redirect: "follow" });
  await response.text();
  if (!response.ok) {
    console.error(`oauth_opener: ${response.url} answered HTTP ${response.status}`);
    process.exit(1);
  }
} catch (e) {
  console.error(`oauth_opener: ${e}`);
  process.exit(1);
}
