// The `cluster` command: `start` (the whole system on this machine), `gateway` and `node` (one role
// each), and `model synth`. This is the composition root: the one place that knows both roles.
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { Command, Option } from 'commander'
import { type Config, ConfigError, resolveConfig } from '../config/config.ts'
import { type SynthPresetName, synthesizeGguf } from '../models/synth.ts'
import { SOFTWARE } from '../version.ts'

const collect = (value: string, previous: string[] = []): string[] => [...previous, value]

/** A --bootstrap value may be a multiaddr or the path of another peer's peer.json. */
async function expandBootstrap(values: string[]): Promise<string[]> {
  const out: string[] = []
  for (const v of values) {
    if (/^\/(ip4|ip6|dns|dns4|dns6)\//.test(v)) {
      out.push(v)
      continue
    }
    const json = JSON.parse(await readFile(v, 'utf8')) as { multiaddrs?: string[] }
    out.push(...(json.multiaddrs ?? []))
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

/** Stops everything on SIGINT/SIGTERM; a second signal, or 5 s, forces the exit. */
function onShutdown(stop: () => Promise<void>): void {
  let stopping = false
  const handler = (signal: NodeJS.Signals): void => {
    if (stopping) process.exit(130)
    stopping = true
    process.stderr.write(`\n${signal}: stopping…\n`)
    setTimeout(() => process.exit(1), 5_000).unref()
    stop().then(
      () => process.exit(0),
      () => process.exit(1),
    )
  }
  process.on('SIGINT', handler)
  process.on('SIGTERM', handler)
}

function loadConfig(opts: Record<string, unknown>, flags: Record<string, unknown>): Config {
  try {
    return resolveConfig({
      ...(typeof opts.config === 'string' ? { file: opts.config } : {}),
      env: process.env,
      flags,
    })
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`cluster: ${err.message}\n`)
      process.exit(2)
    }
    throw err
  }
}

const dataDirOption = (): Option => new Option('--data-dir <dir>', 'data directory (env CLUSTER_DATA_DIR)')
const listenOption = (): Option =>
  new Option('--listen <multiaddr>', 'libp2p listen address (repeatable)').argParser(collect)
const bootstrapOption = (): Option =>
  new Option('--bootstrap <multiaddr|peer.json>', 'a peer to join through (repeatable)').argParser(collect)

/** The flags every peer role shares, as a config layer. */
async function meshFlags(opts: Record<string, unknown>): Promise<Record<string, unknown>> {
  return {
    ...(opts.dataDir ? { dataDir: opts.dataDir as string } : {}),
    ...(opts.listen ? { listen: opts.listen as string[] } : {}),
    ...(opts.bootstrap ? { bootstrap: await expandBootstrap(opts.bootstrap as string[]) } : {}),
  }
}

const gpuOption = (c: Config): 'auto' | false => (c.node.gpu === 'off' ? false : 'auto')

export async function main(argv: string[]): Promise<void> {
  const program = new Command('cluster')
    .description('Cluster: a peer-to-peer inference mesh with an OpenAI-compatible gateway')
    .version(SOFTWARE.version)
    .showHelpAfterError()

  program
    .command('start')
    .description('run the whole system locally: one gateway and one node on 127.0.0.1')
    .addOption(new Option('--port <port>', 'HTTP port of the gateway (env PORT)').default(undefined))
    .option('--data-dir <dir>', 'where everything is kept (env CLUSTER_DATA_DIR)')
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
      const running = await startLocal(config, opts.model)
      onShutdown(running.stop)
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
      const config = loadConfig(opts, {
        ...(await meshFlags(opts)),
        gateway: {
          ...(opts.port ? { port: opts.port as string } : {}),
          ...(opts.host ? { host: opts.host as string } : {}),
        },
      })
      const { startGateway } = await import('../../gateway/gateway.ts')
      const gw = await startGateway({
        dataDir: resolve(config.dataDir),
        ...(config.listen ? { listen: config.listen } : {}),
        bootstrap: config.bootstrap,
        port: config.gateway.port,
        host: config.gateway.host,
      })
      await writePeerJson(resolve(config.dataDir), { peerId: gw.peerId, multiaddrs: gw.multiaddrs(), httpUrl: gw.url })
      process.stdout.write(`gateway ${gw.peerId}\n  HTTP  ${gw.url}\n  mesh  ${gw.multiaddrs().join('\n        ')}\n`)
      onShutdown(gw.stop)
    })

  program
    .command('node')
    .description('run a node peer: serve models to the mesh')
    .addOption(dataDirOption())
    .addOption(listenOption())
    .addOption(bootstrapOption())
    .option('--model <path>', 'a GGUF model to serve (repeatable)', collect)
    .option('--model-id <id>', 'the id clients use for the (first) model')
    .option('--threads <n>', 'CPU threads (default: all cores; env CLUSTER_THREADS)')
    .option('--slots <n>', 'parallel sequences per model')
    .option('--max-queue <n>', 'requests allowed to wait for a free sequence; more are refused as busy')
    .option('--gpu <mode>', 'auto | off')
    .option('--config <file>', 'a JSON config file')
    .action(async (opts: Record<string, unknown>) => {
      const models = ((opts.model as string[] | undefined) ?? []).map((path, i) => ({
        path: resolve(path),
        ...(i === 0 && opts.modelId ? { id: opts.modelId as string } : {}),
      }))
      const config = loadConfig(opts, {
        ...(await meshFlags(opts)),
        node: {
          ...(models.length ? { models } : {}),
          ...(opts.threads ? { threads: opts.threads as string } : {}),
          ...(opts.slots ? { slots: opts.slots as string } : {}),
          ...(opts.maxQueue != null ? { maxQueue: opts.maxQueue as string } : {}),
          ...(opts.gpu ? { gpu: opts.gpu as 'auto' | 'off' } : {}),
        },
      })
      if (config.node.models.length === 0) {
        process.stderr.write(
          'cluster node: give at least one --model PATH (see `cluster model synth` for a test model)\n',
        )
        process.exit(2)
      }
      const { startNode } = await import('../../node/node.ts')
      const node = await startNode({
        dataDir: resolve(config.dataDir),
        ...(config.listen ? { listen: config.listen } : {}),
        bootstrap: config.bootstrap,
        models: config.node.models,
        ...(config.node.threads ? { threads: config.node.threads } : {}),
        slots: config.node.slots,
        maxQueue: config.node.maxQueue,
        ...(config.node.contextSize ? { contextSize: config.node.contextSize } : {}),
        gpu: gpuOption(config),
        ...(config.heartbeatIntervalMs ? { heartbeatIntervalMs: config.heartbeatIntervalMs } : {}),
        payoutAddress: config.node.payoutAddress,
      })
      await writePeerJson(resolve(config.dataDir), { peerId: node.peerId, multiaddrs: node.multiaddrs() })
      process.stdout.write(
        `node ${node.peerId}\n  serving ${[...node.engines.keys()].join(', ')}\n  mesh    ${node.multiaddrs().join('\n          ')}\n`,
      )
      onShutdown(node.stop)
    })

  const model = program.command('model').description('model files')
  model
    .command('synth')
    .description('write a llama GGUF with random weights (for load tests; its output is noise)')
    .addOption(new Option('--preset <name>', 'model shape').choices(['tiny', '1b']).default('tiny'))
    .requiredOption('--out <file>', 'where to write the .gguf')
    .option('--seed <n>', 'random seed', (v) => Number.parseInt(v, 10))
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
