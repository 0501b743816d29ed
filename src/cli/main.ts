// The `cluster` command: `start` (the whole system on this machine), `gateway` and `node` (one role
// each), and `model synth`. This is the composition root: the one place that knows both roles.
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { Command, InvalidArgumentError, Option } from 'commander'
import type { GatewayChainConfig, GatewayX402Config } from '../../gateway/gateway.ts'
import { type Config, ConfigError, gatewayExtras, resolveConfig } from '../config/config.ts'
import { type SynthPresetName, synthesizeGguf } from '../models/synth.ts'
import { SOFTWARE } from '../version.ts'
import {
  dataDirInUse,
  httpUrl,
  isDatabaseOpenFailure,
  isDataDirLocked,
  oneLine,
  UserError,
  unreachableGateway,
} from './errors.ts'
import { registerModels } from './models.ts'
import { Shutdown, StartupAborted } from './shutdown.ts'

const collect = (value: string, previous: string[] = []): string[] => [...previous, value]

/** --seed: a whole number the generator takes as it is (it keeps 32 bits: a larger one would alias). */
const seedArg = (value: string): number => {
  const n = /^\s*\d+\s*$/.test(value) ? Number(value) : Number.NaN
  if (!Number.isSafeInteger(n) || n > 0xffff_ffff)
    throw new InvalidArgumentError('give a whole number from 0 to 4294967295')
  return n
}

/**
 * A --bootstrap value may be a multiaddr or the path of another peer's peer.json. Both are checked
 * now; a file is handed on by its path (the mesh peer re-reads it at every redial, so a peer that
 * restarted on another port is found again), multiaddrs as the config's `bootstrap`.
 */
async function expandBootstrap(values: string[]): Promise<{ multiaddrs: string[]; files: string[] }> {
  const { multiaddr } = await import('@multiformats/multiaddr')
  const { isMultiaddrText, PeerJsonError, parsePeerJson } = await import('../mesh/bootstrap.ts')
  const out = { multiaddrs: [] as string[], files: [] as string[] }
  for (const v of values) {
    if (isMultiaddrText(v)) {
      try {
        multiaddr(v)
      } catch (err) {
        throw new UserError(`--bootstrap: not a valid multiaddr: ${v} (${oneLine(err)})`)
      }
      out.multiaddrs.push(v)
      continue
    }
    const file = resolve(v)
    let text: string
    try {
      text = await readFile(file, 'utf8')
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      throw new UserError(
        code === 'ENOENT' || code === 'ENOTDIR'
          ? `--bootstrap: ${v} is not a multiaddr (such as /ip4/127.0.0.1/tcp/4001/p2p/12D3…), and no peer.json file at ${file}`
          : `--bootstrap: cannot read ${file}: ${code ?? oneLine(err)}`,
      )
    }
    let multiaddrs: string[]
    try {
      multiaddrs = parsePeerJson(text)
    } catch (err) {
      if (!(err instanceof PeerJsonError)) throw err
      throw new UserError(`--bootstrap: ${file} is not a peer.json (${err.message})`)
    }
    if (multiaddrs.length === 0) throw new UserError(`--bootstrap: ${file} lists no multiaddrs`)
    out.files.push(file)
  }
  return out
}

/** Written whole then renamed, so another peer reading it for --bootstrap never sees half. */
async function writePeerJson(
  dataDir: string,
  info: { peerId: string; multiaddrs: string[]; httpUrl?: string },
): Promise<void> {
  const file = join(dataDir, 'peer.json')
  await writeFile(`${file}.tmp`, `${JSON.stringify(info, null, 2)}\n`)
  await rename(`${file}.tmp`, file)
}

/**
 * Runs the start-up of a long-running command with SIGINT/SIGTERM handled from its first moment: a
 * signal stops what `start` registered so far and exits. A data dir another process holds (LevelDB's
 * lock) is said as such.
 */
async function runUntilSignal(dataDir: string, start: (shutdown: Shutdown) => Promise<void>): Promise<void> {
  const shutdown = new Shutdown()
  shutdown.installSignalHandlers()
  try {
    await start(shutdown)
  } catch (err) {
    await shutdown.stop()
    // Cut short by a signal (whatever broke as things were stopped under it): the handler exits.
    if (shutdown.signalled || err instanceof StartupAborted) return
    if (isDataDirLocked(err)) throw dataDirInUse(dataDir)
    if (isDatabaseOpenFailure(err)) {
      throw new UserError(
        `a database in ${dataDir} failed to open (${oneLine(err)}): is another instance using this data dir?`,
        1,
      )
    }
    throw err
  }
}

function loadConfig(opts: Record<string, unknown>, flags: Record<string, unknown>): Config {
  try {
    return resolveConfig({
      ...(typeof opts.config === 'string' ? { file: opts.config } : {}),
      env: process.env,
      flags,
    })
  } catch (err) {
    if (err instanceof ConfigError) throw new UserError(err.message, 2)
    throw err
  }
}

const dataDirOption = (): Option =>
  new Option('--data-dir <dir>', 'data directory (default: env CLUSTER_DATA_DIR, else .cluster)')
const listenOption = (): Option =>
  new Option('--listen <multiaddr>', 'libp2p listen address (repeatable)').argParser(collect)
const bootstrapOption = (): Option =>
  new Option('--bootstrap <multiaddr|peer.json>', 'a peer to join through (repeatable)').argParser(collect)

/**
 * The flags every peer role shares, as a config layer, and the peer.json files given with
 * --bootstrap: the peer is given them beside the config's multiaddrs, to re-read as it redials.
 */
async function meshFlags(
  opts: Record<string, unknown>,
): Promise<{ flags: Record<string, unknown>; bootstrapFiles: string[] }> {
  const bootstrap = opts.bootstrap ? await expandBootstrap(opts.bootstrap as string[]) : undefined
  return {
    flags: {
      ...(opts.dataDir ? { dataDir: opts.dataDir as string } : {}),
      ...(opts.listen ? { listen: opts.listen as string[] } : {}),
      // Flags win over the environment and the file, even when they are all peer.json files.
      ...(bootstrap ? { bootstrap: bootstrap.multiaddrs } : {}),
    },
    bootstrapFiles: bootstrap?.files ?? [],
  }
}

interface AdminOpts {
  gateway?: string
  adminKey?: string
  dataDir?: string
}

async function readJson(file: string): Promise<Record<string, unknown> | undefined> {
  try {
    return JSON.parse(await readFile(file, 'utf8')) as Record<string, unknown>
  } catch {
    return undefined
  }
}

async function readText(file: string): Promise<string | undefined> {
  try {
    return (await readFile(file, 'utf8')).trim()
  } catch {
    return undefined
  }
}

/** Calls an admin route of a running gateway, finding it and the admin key as `npm start` lays them out. */
async function adminCall(opts: AdminOpts, path: string, payload: unknown): Promise<unknown> {
  const dir = resolve(opts.dataDir ?? process.env.CLUSTER_DATA_DIR ?? '.cluster')
  const fromDev = (await readJson(join(dir, 'dev.json')))?.gatewayUrl
  const fromPeer = (await readJson(join(dir, 'peer.json')))?.httpUrl
  const base =
    opts.gateway != null
      ? httpUrl(opts.gateway, '--gateway')
      : typeof fromDev === 'string'
        ? httpUrl(fromDev, `gatewayUrl in ${join(dir, 'dev.json')}`)
        : typeof fromPeer === 'string'
          ? httpUrl(fromPeer, `httpUrl in ${join(dir, 'peer.json')}`)
          : new URL('http://127.0.0.1:8787')
  const key =
    opts.adminKey ??
    process.env.CLUSTER_ADMIN_KEY ??
    (await readText(join(dir, 'admin.key'))) ??
    (await readText(join(dir, 'gateway', 'admin.key')))
  if (key == null)
    throw new UserError(`no admin key: pass --admin-key, set CLUSTER_ADMIN_KEY, or point --data-dir at the gateway's`)
  const url = new URL(path, base)
  let res: Response
  let text: string
  try {
    res = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
      body: JSON.stringify(payload),
      signal: AbortSignal.timeout(30_000),
    })
    text = await res.text()
  } catch (err) {
    throw unreachableGateway(url, err, 'Point --gateway or --data-dir at it')
  }
  let body: { error?: string | { message?: string } } | undefined
  try {
    body = JSON.parse(text) as typeof body
  } catch {
    body = undefined
  }
  if (!res.ok) {
    const why = typeof body?.error === 'string' ? body.error : (body?.error?.message ?? res.statusText)
    throw new UserError(`${res.status}: ${why || 'request failed'}`, 1)
  }
  if (body == null) throw new UserError(`${url.origin} answered ${res.status} with something other than JSON`, 1)
  return body
}

const gpuOption = (c: Config): 'auto' | false => (c.node.gpu === 'off' ? false : 'auto')

/** x402: its settings from the chain section, and the facilitator (remote, or embedded with its own key). */
async function gatewayX402(config: Config, signerAddress: string): Promise<GatewayX402Config | undefined> {
  const x402 = config.x402
  if (x402 == null) return undefined
  const chain = config.chain
  if (chain == null) {
    process.stderr.write('cluster gateway: x402 needs the chain section (its network and USDC)\n')
    process.exit(2)
  }
  const { embeddedFacilitator, remoteFacilitator } = await import('../payments/x402.ts')
  const { loadSignerKey, SignerKeyError } = await import('../chain/escrow.ts')
  let facilitator: GatewayX402Config['facilitator']
  if (x402.facilitatorUrl != null) facilitator = remoteFacilitator(x402.facilitatorUrl)
  else {
    try {
      const privateKey = await loadSignerKey({
        env: process.env,
        file: x402.facilitatorKeyFile,
        envVar: 'CLUSTER_FACILITATOR_KEY',
        purpose: 'the embedded x402 facilitator needs a key to pay gas (or set x402.facilitatorUrl)',
      })
      facilitator = embeddedFacilitator({ rpcUrl: chain.rpcUrl, chainId: chain.chainId, privateKey })
    } catch (err) {
      if (err instanceof SignerKeyError) {
        process.stderr.write(`cluster gateway: ${err.message}\n`)
        process.exit(2)
      }
      throw err
    }
  }
  return {
    settings: {
      network: `eip155:${chain.chainId}`,
      asset: chain.usdc as `0x${string}`,
      assetDomain: { name: x402.assetName, version: x402.assetVersion },
      payTo: (x402.payTo ?? chain.payoutAddress ?? signerAddress) as `0x${string}`,
      maxTimeoutSeconds: x402.maxTimeoutSeconds,
    },
    facilitator,
    rpcUrl: chain.rpcUrl,
    settleTimeoutMs: x402.settleTimeoutMs,
  }
}

/** The gateway's on-chain settings, with its signing key from CLUSTER_GATEWAY_KEY or the key file. */
async function gatewayChain(config: Config): Promise<GatewayChainConfig | undefined> {
  const chain = config.chain
  if (chain == null) return undefined
  const { loadSignerKey, SignerKeyError } = await import('../chain/escrow.ts')
  try {
    const signerKey = await loadSignerKey({ env: process.env, file: chain.signerKeyFile })
    return {
      rpcUrl: chain.rpcUrl,
      chainId: chain.chainId,
      usdc: chain.usdc,
      escrow: chain.escrow,
      signerKey,
      confirmations: chain.confirmations,
      pollIntervalMs: chain.pollIntervalMs,
      settleIntervalMs: chain.settleIntervalMs,
      fromBlock: chain.fromBlock,
      payoutAddress: chain.payoutAddress,
    }
  } catch (err) {
    if (err instanceof SignerKeyError) {
      process.stderr.write(`cluster gateway: ${err.message}\n`)
      process.exit(2)
    }
    throw err
  }
}

export async function main(argv: string[]): Promise<void> {
  const program = new Command('cluster')
    .description('Cluster: a peer-to-peer inference mesh with an OpenAI-compatible gateway')
    .version(SOFTWARE.version)
    // A usage error is one line like any other ("cluster: …"), then where the usage is.
    .configureOutput({ outputError: (text, write) => write(text.replace(/^error: /, 'cluster: ')) })
    .showHelpAfterError('(add --help for usage)')

  program
    .command('start')
    .description('run the whole system locally: one gateway and one node on 127.0.0.1')
    .addOption(new Option('--port <port>', 'HTTP port of the gateway (env PORT)').default(undefined))
    .option('--data-dir <dir>', 'where everything is kept (default: env CLUSTER_DATA_DIR, else .cluster)')
    .option('--model <path>', 'a GGUF model to serve (default: a generated random-weights demo model)')
    .option('--threads <n>', 'CPU threads for the node (default: all cores)')
    .option('--config <file>', 'a JSON config file')
    .action(async (opts: Record<string, string | undefined>) => {
      const config = loadConfig(opts, {
        ...(opts.dataDir ? { dataDir: opts.dataDir } : {}),
        gateway: { ...(opts.port ? { port: opts.port } : {}) },
        node: { ...(opts.threads ? { threads: opts.threads } : {}) },
      })
      const { startLocal } = await import('./start.ts')
      await runUntilSignal(resolve(config.dataDir), async (shutdown) => {
        await startLocal(config, opts.model, shutdown)
      })
    })

  program
    .command('gateway')
    .description('run a gateway peer: the public HTTP API in front of the mesh')
    .addOption(dataDirOption())
    .addOption(listenOption())
    .addOption(bootstrapOption())
    .option('--port <port>', 'HTTP port (env PORT)')
    .option('--host <host>', 'HTTP host', undefined)
    .option('--config <file>', 'a JSON config file')
    .action(async (opts: Record<string, unknown>) => {
      const mesh = await meshFlags(opts)
      const config = loadConfig(opts, {
        ...mesh.flags,
        gateway: {
          ...(opts.port ? { port: opts.port as string } : {}),
          ...(opts.host ? { host: opts.host as string } : {}),
        },
      })
      const { startGateway } = await import('../../gateway/gateway.ts')
      const chain = await gatewayChain(config)
      const { privateKeyToAccount } = await import('viem/accounts')
      const x402 = await gatewayX402(config, chain ? privateKeyToAccount(chain.signerKey).address : '')
      await runUntilSignal(resolve(config.dataDir), async (shutdown) => {
        const gw = await shutdown.track(
          startGateway({
            ...(config.logLevel ? { logLevel: config.logLevel } : {}),
            ...(chain ? { chain } : {}),
            ...(x402 ? { x402 } : {}),
            dataDir: resolve(config.dataDir),
            ...(config.listen ? { listen: config.listen } : {}),
            bootstrap: [...config.bootstrap, ...mesh.bootstrapFiles],
            port: config.gateway.port,
            host: config.gateway.host,
            ...gatewayExtras(config),
          }),
          (g) => g.stop(),
        )
        await writePeerJson(resolve(config.dataDir), {
          peerId: gw.peerId,
          multiaddrs: gw.multiaddrs(),
          httpUrl: gw.url,
        })
        process.stdout.write(`gateway ${gw.peerId}\n  HTTP  ${gw.url}\n  mesh  ${gw.multiaddrs().join('\n        ')}\n`)
        if (gw.chain) {
          process.stdout.write(
            `  chain ${gw.chain.client.chain.id}: escrow ${gw.chain.client.escrow}, settling as ${gw.chain.client.address}\n`,
          )
        }
        if (gw.adminKeyFile)
          process.stdout.write(`  first admin account created: its API key is in ${gw.adminKeyFile}\n`)
        if (gw.reconciledHolds > 0) {
          process.stdout.write(
            `  freed ${gw.reconciledHolds} balance hold(s) left open by an earlier run that stopped abruptly\n`,
          )
        }
      })
    })

  program
    .command('node')
    .description('run a node peer: serve models to the mesh')
    .addOption(dataDirOption())
    .addOption(listenOption())
    .addOption(bootstrapOption())
    .option(
      '--model <path|cid:CID>',
      'a GGUF model to serve, or cid:<CID> to fetch its weights over IPFS (repeatable; none: serve what gateways deploy)',
      collect,
    )
    .option('--model-id <id>', 'the id clients use for the (first) model')
    .option(
      '--upstream <url>',
      'serve a model from an OpenAI-compatible server you run (vLLM, llama-server, Ollama: e.g. http://127.0.0.1:8000/v1); with --upstream-model',
    )
    .option('--upstream-model <name>', "the server's name for the model (clients use --model-id, else this)")
    .option('--threads <n>', 'CPU threads (default: all cores; env CLUSTER_THREADS)')
    .option('--slots <n>', 'parallel sequences per model')
    .option('--max-queue <n>', 'requests allowed to wait for a free sequence; more are refused as busy')
    .option(
      '--max-queue-wait <ms>',
      'longest a request may wait for a sequence; one that would wait longer is refused as busy (default 30000)',
    )
    .option('--gpu <mode>', 'auto | off')
    .option('--payout-address <0x…>', 'the EVM address your earnings are settled to (claim with `cluster earnings`)')
    .option('--metrics-port <n>', 'serve Prometheus /metrics on 127.0.0.1 at this port')
    .option(
      '--trusted-gateway <peer-id>',
      'a gateway whose deploy/undeploy requests are taken, beside the bootstrap peers (repeatable; node.trustedGateways)',
      collect,
    )
    .option('--config <file>', 'a JSON config file')
    .action(async (opts: Record<string, unknown>) => {
      // A cid: value is fetched over IPFS by the node, not a path on this machine.
      const models = ((opts.model as string[] | undefined) ?? []).map((path, i) => ({
        path: path.startsWith('cid:') ? path : resolve(path),
        ...(i === 0 && opts.modelId ? { id: opts.modelId as string } : {}),
      }))
      if ((opts.upstream == null) !== (opts.upstreamModel == null)) {
        throw new UserError('--upstream and --upstream-model go together')
      }
      if (opts.modelId != null && models.length === 0 && opts.upstream == null) {
        throw new UserError('--model-id names the model given with --model or --upstream: give one of those too')
      }
      const upstreams =
        opts.upstream != null
          ? [
              {
                baseUrl: opts.upstream as string,
                model: opts.upstreamModel as string,
                ...(models.length === 0 && opts.modelId ? { id: opts.modelId as string } : {}),
              },
            ]
          : []
      const mesh = await meshFlags(opts)
      const config = loadConfig(opts, {
        ...mesh.flags,
        node: {
          ...(models.length ? { models } : {}),
          ...(upstreams.length ? { upstreams } : {}),
          ...(opts.threads ? { threads: opts.threads as string } : {}),
          ...(opts.slots ? { slots: opts.slots as string } : {}),
          ...(opts.maxQueue != null ? { maxQueue: opts.maxQueue as string } : {}),
          ...(opts.maxQueueWait != null ? { maxQueueWaitMs: opts.maxQueueWait as string } : {}),
          ...(opts.gpu ? { gpu: opts.gpu as 'auto' | 'off' } : {}),
          ...(opts.trustedGateway ? { trustedGateways: opts.trustedGateway as string[] } : {}),
          ...(opts.payoutAddress != null ? { payoutAddress: opts.payoutAddress as string } : {}),
          ...(opts.metricsPort != null ? { metricsPort: opts.metricsPort as string } : {}),
        },
      })
      const { CID } = await import('multiformats/cid')
      for (const m of config.node.models) {
        if (!m.path.startsWith('cid:')) continue
        try {
          CID.parse(m.path.slice('cid:'.length))
        } catch {
          throw new UserError(`--model ${m.path}: not a CID (give cid:bafy…, as \`cluster models ls\` shows)`)
        }
      }
      const { startNode } = await import('../../node/node.ts')
      await runUntilSignal(resolve(config.dataDir), async (shutdown) => {
        const node = await shutdown.track(
          startNode({
            ...(config.logLevel ? { logLevel: config.logLevel } : {}),
            dataDir: resolve(config.dataDir),
            ...(config.listen ? { listen: config.listen } : {}),
            bootstrap: [...config.bootstrap, ...mesh.bootstrapFiles],
            models: config.node.models,
            upstreams: config.node.upstreams.map((u) => ({
              baseUrl: u.baseUrl,
              upstreamModel: u.model,
              modelId: u.id,
              apiKey: process.env.CLUSTER_UPSTREAM_API_KEY,
              contextSize: u.contextSize,
              slots: u.slots,
            })),
            ...(config.node.threads ? { threads: config.node.threads } : {}),
            slots: config.node.slots,
            maxQueue: config.node.maxQueue,
            ...(config.node.maxQueueWaitMs != null ? { maxQueueWaitMs: config.node.maxQueueWaitMs } : {}),
            ...(config.node.contextSize ? { contextSize: config.node.contextSize } : {}),
            gpu: gpuOption(config),
            ...(config.heartbeatIntervalMs ? { heartbeatIntervalMs: config.heartbeatIntervalMs } : {}),
            payoutAddress: config.node.payoutAddress,
            acceptDeploys: config.node.acceptDeploys,
            trustedGateways: config.node.trustedGateways,
            ...(config.node.modelMemoryBytes != null ? { modelMemoryBytes: config.node.modelMemoryBytes } : {}),
            ...(config.node.metricsPort != null ? { metricsPort: config.node.metricsPort } : {}),
          }),
          (n) => n.stop(),
        )
        await writePeerJson(resolve(config.dataDir), { peerId: node.peerId, multiaddrs: node.multiaddrs() })
        const fetching = config.node.models.filter((m) => m.path.startsWith('cid:')).map((m) => m.path)
        const serving = [
          ...(node.engines.size > 0 ? [`  serving ${[...node.engines.keys()].join(', ')}`] : []),
          ...(fetching.length > 0 ? [`  fetching ${fetching.join(', ')} over IPFS; served once loaded`] : []),
          ...(config.node.models.length === 0 ? ['  waiting for deployments (`cluster models deploy ID`)'] : []),
        ]
        process.stdout.write(
          `node ${node.peerId}\n${serving.join('\n')}\n  mesh    ${node.multiaddrs().join('\n          ')}\n`,
        )
        process.stdout.write(
          config.node.payoutAddress
            ? `  payout  ${config.node.payoutAddress}\n`
            : '  payout  none: set --payout-address to be paid for the work\n',
        )
      })
    })

  const accounts = program
    .command('accounts')
    .description('accounts on a running gateway (needs an admin key)')
    .addHelpText(
      'after',
      '\nThe gateway and its admin key are found through --data-dir (default: env CLUSTER_DATA_DIR, else .cluster),\nunless --gateway and --admin-key (or env CLUSTER_ADMIN_KEY) name them.',
    )
  const gatewayFlags = (cmd: Command): Command =>
    cmd
      .option(
        '--gateway <url>',
        'the gateway (default: from <data-dir>/dev.json or peer.json, else http://127.0.0.1:8787)',
      )
      .option('--admin-key <key>', 'an admin API key (default: env CLUSTER_ADMIN_KEY, else <data-dir>/admin.key)')
      .option(
        '--data-dir <dir>',
        'where to find the gateway and its admin key (default: env CLUSTER_DATA_DIR, else .cluster)',
      )
  gatewayFlags(
    accounts
      .command('create')
      .description('create an account and print its API key')
      .requiredOption('--email <email>', 'the account email')
      .option('--password <password>', 'a password for /api/auth/login (default: none, key only)')
      .option('--admin', 'make it an admin'),
  ).action(async (opts: AdminOpts & { email: string; password?: string; admin?: boolean }) => {
    const res = await adminCall(opts, '/api/admin/accounts', {
      email: opts.email,
      ...(opts.password ? { password: opts.password } : {}),
      admin: opts.admin === true,
    })
    process.stdout.write(`${JSON.stringify(res, null, 2)}\n`)
  })
  gatewayFlags(
    accounts
      .command('credit')
      .description("credit an account's balance (one transaction)")
      .requiredOption('--email <email>', 'the account email')
      .requiredOption('--amount <dollars>', 'e.g. 5.00'),
  ).action(async (opts: AdminOpts & { email: string; amount: string }) => {
    const res = await adminCall(opts, '/api/admin/credit', { email: opts.email, amount: opts.amount })
    process.stdout.write(`${JSON.stringify(res, null, 2)}\n`)
  })

  program
    .command('earnings')
    .description("a payout address's earnings in the escrow; --claim sends them to it")
    .option('--address <0x…>', "the payout address (default: the key's address, or the node's from dev.json)")
    .option('--claim', 'claim them (needs the payout key: env CLUSTER_PAYOUT_KEY or --key-file)')
    .option('--key-file <file>', 'file holding the payout private key (0x + 64 hex digits, mode 600)')
    .option('--rpc-url <url>', 'the chain (default: chain.rpcUrl of the config, else dev.json)')
    .option('--escrow <0x…>', 'the escrow (default: chain.escrow of the config, else dev.json)')
    .option('--data-dir <dir>', 'where dev.json is (default: env CLUSTER_DATA_DIR, else .cluster)')
    .option('--config <file>', 'a JSON config file')
    .action(async (opts: Record<string, string | boolean | undefined>) => {
      const { earnings } = await import('./earnings.ts')
      const config = loadConfig(opts, opts.dataDir ? { dataDir: opts.dataDir as string } : {})
      const code = await earnings(config, {
        address: opts.address as string | undefined,
        claim: opts.claim === true,
        keyFile: opts.keyFile as string | undefined,
        rpcUrl: opts.rpcUrl as string | undefined,
        escrow: opts.escrow as string | undefined,
      })
      process.exitCode = code
    })

  registerModels(program)

  const model = program.command('model').description('model files')
  model
    .command('synth')
    .description('write a GGUF with random weights (for load tests; its output is noise)')
    .addOption(
      new Option('--preset <name>', 'model shape').choices(['tiny', 'small', '1b', 'rerank-tiny']).default('tiny'),
    )
    .requiredOption('--out <file>', 'where to write the .gguf')
    .option('--seed <n>', 'random seed: a whole number from 0 to 4294967295', seedArg)
    .action(async (opts: { preset: SynthPresetName; out: string; seed?: number }) => {
      const out = resolve(opts.out)
      await mkdir(join(out, '..'), { recursive: true })
      const result = await synthesizeGguf({
        preset: opts.preset,
        out,
        ...(opts.seed != null ? { seed: opts.seed } : {}),
      })
      process.stdout.write(`wrote ${result.path} (${result.preset}, ${(result.bytes / 1024 / 1024).toFixed(1)} MiB)\n`)
    })

  await program.parseAsync(argv)
}

/** Prints a failed command's error as one line (the stack with CLUSTER_DEBUG set); returns the exit code. */
export function reportError(err: unknown): number {
  const line = err instanceof UserError ? err.message : oneLine(err)
  const more = !(err instanceof UserError) && line !== String((err as Error)?.message ?? err).trim()
  const debug = Boolean(process.env.CLUSTER_DEBUG)
  process.stderr.write(`cluster: ${line}${more && !debug ? ' (CLUSTER_DEBUG=1 for the details)' : ''}\n`)
  if (debug) process.stderr.write(`${(err as Error)?.stack ?? ''}\n`)
  return err instanceof UserError ? err.exitCode : 1
}
