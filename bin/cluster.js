#!/usr/bin/env node
// The `cluster` command: registers the TypeScript loader, loads the Node 20 polyfills
// before anything touches libp2p, then hands over to the CLI.
import { register } from 'tsx/esm/api'

register()
await import('../src/polyfill.ts')
const { main, reportError } = await import('../src/cli/main.ts')
try {
  await main(process.argv)
} catch (err) {
  // One clear line for the user ("cluster: …"); the stack only when asked for.
  process.exit(reportError(err))
}
