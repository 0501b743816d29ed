#!/usr/bin/env node
// forge's compiler, offline: a tiny command-line front for solc-js (the npm `solc` package, a wasm
// build of the Solidity compiler), so nothing has to be downloaded. foundry.toml names this file as
// `solc`. forge calls it two ways:
//   --version        → prints "Version: x.y.z+commit…" as native solc does
//   --standard-json  → reads Standard JSON on stdin, writes the Standard JSON output to stdout
// Other flags forge may add (--allow-paths, --base-path, --include-path) only matter for imports that
// are not in the input; forge inlines every source, so they are read here just to resolve such imports.
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { isAbsolute, resolve } from 'node:path'

const require = createRequire(import.meta.url)
const solc = require('solc')
const args = process.argv.slice(2)

if (args.includes('--version') || args.includes('-v')) {
  process.stdout.write(`solc, the solidity compiler commandline interface\nVersion: ${solc.version()}\n`)
  process.exit(0)
}

if (!args.includes('--standard-json')) {
  process.stderr.write('solc-js wrapper: only --version and --standard-json are supported\n')
  process.exit(1)
}

const roots = [process.cwd()]
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--base-path' || args[i] === '--include-path') {
    const dir = args[i + 1]
    if (dir) roots.push(resolve(dir))
  }
}

function findImports(path) {
  const candidates = isAbsolute(path) ? [path] : roots.map((root) => resolve(root, path))
  for (const file of candidates) {
    try {
      return { contents: readFileSync(file, 'utf8') }
    } catch {}
  }
  return { error: `File not found: ${path}` }
}

const input = readFileSync(0, 'utf8')
const output = solc.compile(input, { import: findImports })
process.stdout.write(output)
