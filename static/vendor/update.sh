#!/usr/bin/env bash
# Re-fetch the page's vendored libraries from the npm registry at the versions pinned below, and
# write their browser ES module files and licences into static/vendor/. Nothing here is edited by
# hand: to update a library, change its version below, run this script, read the diff, run the
# page tests (python -m pytest tests/test_page.py -q) and commit the result.
#
#   bash static/vendor/update.sh
#
# Why these files: each is a single ES module with no `import` of its own, so the page loads it
# with a plain relative import (no bundler, no import map, which the page's CSP forbids).
set -euo pipefail
cd "$(dirname "$0")"

MARKED_VERSION=18.3.0     # Markdown parser (CommonMark + GitHub tables, fences, strikethrough)
DOMPURIFY_VERSION=3.5.0   # HTML sanitizer: the second layer behind our own Markdown renderer

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# npm pack downloads the package tarball exactly as published (checked against the registry's
# integrity hash), without installing anything or running any package script.
# Its integrity hash is written to VERSIONS, so a diff shows when a re-fetch brought other bytes.
fetch() {
  local name="$1" version="$2"
  mkdir -p "$work/$name"
  (cd "$work" && npm pack --json "$name@$version" >"$name.json")
  node -e 'process.stdout.write(JSON.parse(require("fs").readFileSync(process.argv[1]))[0].integrity)' \
    "$work/$name.json" >"$work/$name.integrity"
  tar -xzf "$work/$name-$version.tgz" -C "$work/$name"
}

fetch marked "$MARKED_VERSION"
fetch dompurify "$DOMPURIFY_VERSION"

# The source map comment points at a file we do not ship: drop that one line, nothing else.
strip_map() { grep -v '^//# sourceMappingURL=' "$1"; }

strip_map "$work/marked/package/lib/marked.esm.js" >marked.esm.js
cp "$work/marked/package/LICENSE" marked.LICENSE.md
strip_map "$work/dompurify/package/dist/purify.es.mjs" >purify.es.mjs
cp "$work/dompurify/package/LICENSE" purify.LICENSE

cat >VERSIONS <<VERSIONS
# Written by static/vendor/update.sh: what each file here is, from which npm package and version.
marked.esm.js   marked@$MARKED_VERSION, lib/marked.esm.js, MIT (marked.LICENSE.md)
                $(cat "$work/marked.integrity")
purify.es.mjs   dompurify@$DOMPURIFY_VERSION, dist/purify.es.mjs, MPL-2.0 OR Apache-2.0 (purify.LICENSE)
                $(cat "$work/dompurify.integrity")
VERSIONS

# Refuse a file that would need a bundler: any import or export ... from '...' with a bare name.
if grep -nE "(^|[;}])\s*(import|export)[^;]*from\s*['\"][^./]" marked.esm.js purify.es.mjs; then
  echo "a vendored file imports a bare module name: the browser cannot load it" >&2
  exit 1
fi
echo "vendored: marked@$MARKED_VERSION dompurify@$DOMPURIFY_VERSION"
