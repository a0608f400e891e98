// Checks UserSigs made by timattr_exporter against the official npm library `tls-sig-api-v2`.
//
// Input (stdin): a JSON array of {key, sdkappid, identifier, usersig}.
// For each case: reverse the library's base64url variant exactly as its own `base64url.unescape`
// does, inflate with Node's zlib, parse the document, recompute `TLS.sig` with the library's own
// `Api.prototype._hmacsha256`, and compare. Then have the library generate a UserSig itself with
// its clock pinned to our `TLS.time` and check that both documents are identical.
// Prints one line per case and exits 1 if any case fails, 2 on bad input.
'use strict';

const zlib = require('zlib');
const TLSSigAPIv2 = require('tls-sig-api-v2');

// Verbatim from tls-sig-api-v2 1.0.2 (TLSSigAPIv2.js), which does not export it.
function unescape(str) {
  return (str + Array(5 - str.length % 4))
    .replace(/_/g, '=')
    .replace(/\-/g, '/')
    .replace(/\*/g, '+');
}

function decode(usersig) {
  const compressed = Buffer.from(unescape(usersig), 'base64');
  return JSON.parse(zlib.inflateSync(compressed).toString());
}

function officialDocument(c, time, expire) {
  const realNow = Date.now;
  Date.now = () => time * 1000;
  try {
    return decode(new TLSSigAPIv2.Api(c.sdkappid, c.key).genUserSig(c.identifier, expire));
  } finally {
    Date.now = realNow;
  }
}

function check(c) {
  let doc;
  try {
    doc = decode(c.usersig);
  } catch (e) {
    return 'cannot decode: ' + e.message;
  }
  if (doc['TLS.ver'] !== '2.0') return 'TLS.ver is ' + JSON.stringify(doc['TLS.ver']);
  if (doc['TLS.sdkappid'] !== Number(c.sdkappid)) return 'sdkappid differs';
  if (doc['TLS.identifier'] !== String(c.identifier)) return 'identifier differs';
  if (!Number.isInteger(doc['TLS.time']) || !Number.isInteger(doc['TLS.expire'])) {
    return 'TLS.time or TLS.expire is not an integer';
  }
  const api = new TLSSigAPIv2.Api(c.sdkappid, c.key);
  const expected = api._hmacsha256(doc['TLS.identifier'], doc['TLS.time'], doc['TLS.expire'], null);
  if (doc['TLS.sig'] !== expected) return 'TLS.sig does not match the official HMAC';
  const official = officialDocument(c, doc['TLS.time'], doc['TLS.expire']);
  const keys = Object.keys(official).sort();
  if (JSON.stringify(keys) !== JSON.stringify(Object.keys(doc).sort())) {
    return 'document fields differ from the official library\'s: ' + Object.keys(doc).sort().join(',');
  }
  for (const k of keys) {
    if (official[k] !== doc[k]) return 'field ' + k + ' differs from the official library\'s';
  }
  return null;
}

let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (d) => { input += d; });
process.stdin.on('end', () => {
  let cases;
  try {
    cases = JSON.parse(input);
  } catch (e) {
    console.error('bad input: ' + e.message);
    process.exit(2);
  }
  if (!Array.isArray(cases) || cases.length === 0) {
    console.error('bad input: expected a non-empty array');
    process.exit(2);
  }
  let failed = 0;
  cases.forEach((c, i) => {
    const err = check(c);
    if (err) {
      failed++;
      // Never print the key or the UserSig, even in a test tool.
      console.log('case ' + i + ' (' + c.identifier + '): FAIL: ' + err);
    } else {
      console.log('case ' + i + ' (' + c.identifier + '): ok');
    }
  });
  process.exit(failed === 0 ? 0 : 1);
});
