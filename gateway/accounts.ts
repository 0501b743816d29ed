// Accounts at the gateway: sign-up and login, API keys (created, listed by prefix, revoked) and
// the first admin. Passwords and keys only ever pass through here; the ledger keeps hashes.
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Account, ApiKeyRecord, Ledger, Role } from '../src/ledger/ledger.ts'
import {
  type GatewaySecret,
  hashPassword,
  keyPrefix,
  looksLikeApiKey,
  newApiKey,
  verifyPassword,
} from '../src/ledger/secrets.ts'

export const DEFAULT_ADMIN_EMAIL = 'admin@cluster.local'

export interface Authenticated {
  account: Account
  key: ApiKeyRecord
}

export class Accounts {
  constructor(
    readonly ledger: Ledger,
    private readonly secret: GatewaySecret,
  ) {}

  /** Creates an account with a login key; returns the key once, in plain text. */
  async register(
    email: string,
    password: string | null,
    role: Role = 'user',
  ): Promise<{ account: Account; apiKey: string }> {
    const passwordHash = password == null ? '' : await hashPassword(password)
    const account = await this.ledger.createAccount({ email, role, passwordHash })
    const { apiKey } = await this.issueKey(account.id, 'login', true)
    return { account, apiKey }
  }

  /**
   * Checks a password and returns the account's login key (the docs' login returns `apiKey`).
   * The login key is kept sealed under the gateway secret for this; if it was revoked, a new one is issued.
   */
  async login(email: string, password: string): Promise<{ account: Account; apiKey: string } | undefined> {
    const account = await this.ledger.findAccountByEmail(email)
    // Hash even for an unknown email, so timing does not tell which emails exist.
    const ok = await verifyPassword(password, account?.passwordHash || (await dummyHash()))
    if (account == null || !ok || account.passwordHash === '') return undefined
    return { account, apiKey: await this.loginKey(account.id) }
  }

  /** The account's login key (unsealed), issuing one if it has none: for the operator's own tools. */
  async loginKey(accountId: string): Promise<string> {
    const keys = await this.ledger.listKeys(accountId)
    const login = keys.find((k) => k.sealed != null && k.revokedAt == null)
    if (login?.sealed != null) return this.secret.unseal(login.sealed)
    return (await this.issueKey(accountId, 'login', true)).apiKey
  }

  async authenticate(apiKey: string): Promise<Authenticated | undefined> {
    if (!looksLikeApiKey(apiKey)) return undefined
    // The lookup is an HMAC of the key: equal lookups mean equal keys, and no stored secret is compared.
    return this.ledger.findKey(this.secret.lookup(apiKey))
  }

  async createKey(accountId: string, name: string): Promise<{ key: ApiKeyRecord; apiKey: string }> {
    return this.issueKey(accountId, name, false)
  }

  /** A new key for the account; `sealed` keeps it recoverable (the login key only). */
  private async issueKey(
    accountId: string,
    name: string,
    sealed: boolean,
  ): Promise<{ key: ApiKeyRecord; apiKey: string }> {
    const apiKey = newApiKey()
    const key = await this.ledger.addKey(accountId, {
      lookup: this.secret.lookup(apiKey),
      prefix: keyPrefix(apiKey),
      name,
      ...(sealed ? { sealed: this.secret.seal(apiKey) } : {}),
    })
    return { key, apiKey }
  }

  /**
   * On a gateway with no accounts, creates the first admin and writes its key to
   * `<dataDir>/admin.key` (mode 0600). Returns the file path when it did.
   */
  async ensureFirstAdmin(dataDir: string, email = DEFAULT_ADMIN_EMAIL): Promise<string | undefined> {
    if (this.ledger.countAccounts() > 0) return undefined
    const { apiKey } = await this.register(email, null, 'admin')
    const file = join(dataDir, 'admin.key')
    await writeFile(file, `${apiKey}\n`, { mode: 0o600 })
    return file
  }
}

// A valid hash of a random password: verifying against it costs what a real check costs. Made on
// the first login rather than at start-up (scrypt takes tens of milliseconds).
let dummy: Promise<string> | undefined
const dummyHash = (): Promise<string> => {
  dummy ??= hashPassword(newApiKey())
  return dummy
}
