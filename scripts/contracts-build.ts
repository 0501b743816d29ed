// npm run contracts:build — compiles contracts/ with forge (solc-js, offline) and writes src/chain/artifacts.ts.
import { writeFile } from 'node:fs/promises'
import { relative } from 'node:path'
import { ARTIFACTS_FILE, buildContracts, ROOT, renderArtifacts } from './contracts.ts'

const build = await buildContracts()
process.stdout.write(build.stdout)
const text = await renderArtifacts()
await writeFile(ARTIFACTS_FILE, text)
console.log(
  `wrote ${relative(ROOT, ARTIFACTS_FILE)} (${(text.length / 1024).toFixed(0)} KiB) in ${(build.ms / 1000).toFixed(1)} s`,
)
