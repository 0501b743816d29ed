// A pino destination that keeps every line, for tests that read what was logged.
import { Writable } from 'node:stream'

export function memoryLog(): { stream: Writable; lines: () => Array<Record<string, unknown>>; raw: () => string } {
  let text = ''
  const stream = new Writable({
    write(chunk, _enc, done) {
      text += String(chunk)
      done()
    },
  })
  return {
    stream,
    raw: () => text,
    lines: () =>
      text
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as Record<string, unknown>),
  }
}
