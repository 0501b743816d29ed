#!/usr/bin/env node
import { resolve } from 'node:path'
// Runs one TypeScript file (a bench or a script) with the same loader and polyfills as the CLI.
import { pathToFileURL } from 'node:url'
import { register } from 'tsx/esm/api'

register()
await import('../src/polyfill.ts')
const file = process.argv[2]
if (!file) {
  console.error('usage: run-ts.js FILE.ts [args…]')
  process.exit(2)
}
process.argv.splice(1, 1)
await import(pathToFileURL(resolve(file)).href)
