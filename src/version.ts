// The software name and version peers advertise, read once from package.json.
import { createRequire } from 'node:module'

const pkg = createRequire(import.meta.url)('../package.json') as { name: string; version: string }

export const SOFTWARE = { name: 'cluster', version: pkg.version } as const
