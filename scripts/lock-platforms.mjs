#!/usr/bin/env node
// Completes package-lock.json with the other platforms' optional binary packages (macOS, Windows,
// musl, …) that this machine's registry does not serve. `npm ci` insists every optional dependency
// be in the lock; on a platform that does not match an entry's os/cpu/libc it skips it without a
// download, so an entry naming the version and platform is all it needs. Run after `npm install`.
import { readFileSync, writeFileSync } from 'node:fs'

const file = new URL('../package-lock.json', import.meta.url)
const lock = JSON.parse(readFileSync(file, 'utf8'))
const packages = lock.packages

/** os / cpu / libc from a platform package's name, e.g. cli-linux-x64-musl, mac-arm64-metal. */
function platformOf(name) {
  const n = name.toLowerCase()
  const os = /darwin|mac/.test(n)
    ? 'darwin'
    : /win32|win-/.test(n)
      ? 'win32'
      : /android/.test(n)
        ? 'android'
        : /linux/.test(n)
          ? 'linux'
          : /freebsd/.test(n)
            ? 'freebsd'
            : undefined
  const cpu = /arm64|aarch64/.test(n)
    ? 'arm64'
    : /armv7|arm(?!64)/.test(n)
      ? 'arm'
      : /riscv64/.test(n)
        ? 'riscv64'
        : /ia32|x86(?!_64)/.test(n)
          ? 'ia32'
          : /x64|amd64|x86_64/.test(n)
            ? 'x64'
            : undefined
  const libc = os === 'linux' ? (/musl/.test(n) ? 'musl' : 'glibc') : undefined
  return { os, cpu, libc }
}

let added = 0
for (const [path, entry] of Object.entries(packages)) {
  for (const [dep, range] of Object.entries(entry.optionalDependencies ?? {})) {
    const base = path === '' ? 'node_modules/' : `${path}/node_modules/`
    if (packages[`${base}${dep}`] != null || packages[`node_modules/${dep}`] != null) continue
    const { os, cpu, libc } = platformOf(dep)
    if (os == null) continue // not a platform package: leave it to npm
    const version = String(range).replace(/^[\^~=]/, '')
    packages[`node_modules/${dep}`] = {
      version,
      ...(cpu ? { cpu: [cpu] } : {}),
      ...(entry.dev ? { dev: true } : {}),
      ...(libc ? { libc: [libc] } : {}),
      optional: true,
      os: [os],
    }
    added++
  }
}
writeFileSync(file, `${JSON.stringify(lock, null, 2)}\n`)
console.log(`lock-platforms: ${added} platform package(s) added to package-lock.json`)
