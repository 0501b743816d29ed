// Structured JSON logs (pino) for both roles. Secrets never reach a log line: the fields that could
// carry one are redacted wherever they appear, and nothing logs request bodies or headers whole.
import { type DestinationStream, type LevelWithSilent, type Logger, pino } from 'pino'

export type { Logger }

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const

/** Paths pino blanks out, at the top level and one level down. */
const SECRET_FIELDS = ['authorization', 'token', 'apiKey', 'password', 'privateKey', 'secret', 'signature']
const REDACT = SECRET_FIELDS.flatMap((f) => [f, `*.${f}`])

export interface LogOptions {
  /** 'gateway' or 'node'; every line carries it. */
  role: string
  /** @default CLUSTER_LOG_LEVEL, else 'info' */
  level?: LevelWithSilent
  /** Where lines go. @default stderr */
  destination?: DestinationStream
}

export function createLogger(options: LogOptions): Logger {
  return pino(
    {
      level: options.level ?? envLevel() ?? 'info',
      base: { role: options.role },
      redact: { paths: REDACT, censor: '[redacted]' },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    options.destination ?? pino.destination({ dest: 2, sync: false }),
  )
}

function envLevel(): LevelWithSilent | undefined {
  const v = process.env.CLUSTER_LOG_LEVEL
  return v != null && (LOG_LEVELS as readonly string[]).includes(v) ? (v as LevelWithSilent) : undefined
}

/** The one-line operational messages the rest of the code emits, as info lines of `logger`. */
export function lineLogger(logger: Logger): (line: string) => void {
  return (line) => logger.info(line)
}
