// Our adjustments to the connections a connection encrypter (noise) secures, in one wrapper: `raw`
// sees each raw connection before it is secured (coalesce.ts), `secured` each secured one after
// (noise-frames.ts).
import type { ConnectionEncrypter, MessageStream, SecuredConnection } from '@libp2p/interface'

export interface EncrypterHooks {
  raw?: <T extends MessageStream>(connection: T) => T
  secured?: <T>(secured: SecuredConnection<T>) => SecuredConnection<T>
}

/** Wraps a connection encrypter factory (e.g. noise()) so every connection it secures goes through `hooks`. */
export function withEncrypterHooks<A extends unknown[], E extends ConnectionEncrypter>(
  factory: (...args: A) => E,
  hooks: EncrypterHooks,
): (...args: A) => E {
  const raw = hooks.raw ?? (<T>(connection: T): T => connection)
  const secured = hooks.secured ?? (<T>(s: SecuredConnection<T>): SecuredConnection<T> => s)
  return (...args: A): E => {
    const encrypter = factory(...args)
    const secureInbound = encrypter.secureInbound.bind(encrypter)
    const secureOutbound = encrypter.secureOutbound.bind(encrypter)
    encrypter.secureInbound = async (connection, options) => secured(await secureInbound(raw(connection), options))
    encrypter.secureOutbound = async (connection, options) => secured(await secureOutbound(raw(connection), options))
    return encrypter
  }
}
