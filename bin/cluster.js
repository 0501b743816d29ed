#!/usr/bin/env node
// The `cluster` command: registers the TypeScript loader, loads the Node 20 polyfills
// before anything touches libp2p, then hands over to the CLI.
import { register } from 'tsx/esm/api'

register()
await import('../src/polyfill.ts')
const { main } = await import('../src/cli/main.ts')
try {
  await main(process.argv)
} catch (err) {
  // A clear line for the user; the stack only when asked for.
  process.stderr.write(`cluster: ${err?.message ?? err}\n`)
  if (process.env.CLUSTER_DEBUG) process.stderr.write(`${err?.stack ?? ''}\n`)
  process.exit(1)
}
