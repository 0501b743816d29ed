// A node frees, when it starts, the disk an earlier run left behind: a model file (whole or partly
// fetched) that no deployment uses any more, and its blocks — an undeploy cut short by a crash, or
// made by a version that did not free its disk. Anything not named as the deployer names its files
// is left alone. A real node, restarted on the same data dir.
import { mkdir, readdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { type RunningNode, startNode } from '../../node/node.ts'
import { parseCid } from '../../src/storage/content.ts'
import { tempDir, waitFor } from '../helpers/fixtures.ts'

describe('Deployer at start', () => {
  const cleanups: Array<() => Promise<void>> = []
  let node: RunningNode | undefined
  afterAll(async () => {
    await node?.stop()
    for (const c of cleanups) await c()
  })

  const start = (dataDir: string, logs: string[] = []): Promise<RunningNode> =>
    startNode({
      dataDir,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      models: [],
      gpu: false,
      log: (line: string) => logs.push(line),
    })

  it('frees model files and blocks no deployment uses, and leaves other files alone', async () => {
    const d = await tempDir('deployer-leftovers')
    cleanups.push(d.remove)
    // First run: blocks of two "models" in the node's store, as a fetch leaves them.
    node = await start(d.path)
    const add = async (fill: number): Promise<string> =>
      (
        await (node as RunningNode).store.add(
          (async function* () {
            yield Buffer.alloc(300_000, fill)
          })(),
        )
      ).cid.toString()
    const whole = await add(1)
    const partial = await add(2)
    await node.stop()
    node = undefined

    // What an interrupted undeploy (or an older version's) leaves: its files, and its blocks.
    const models = join(d.path, 'models')
    await mkdir(models, { recursive: true })
    await writeFile(join(models, `${whole}.gguf`), Buffer.alloc(1000, 1))
    await writeFile(join(models, `${partial}.gguf.part`), Buffer.alloc(500, 2))
    // Not the deployer's: kept.
    await writeFile(join(models, 'not-a-cid.gguf'), 'x')
    await writeFile(join(models, 'notes.txt'), 'x')

    const logs: string[] = []
    node = await start(d.path, logs)
    // Freed in the background, serving does not wait for it.
    await waitFor(async () => (await readdir(models)).length === 2, 10_000, 'the leftovers freed')
    expect((await readdir(models)).sort()).toEqual(['not-a-cid.gguf', 'notes.txt'])
    await waitFor(async () => !(await (node as RunningNode).store.hasAll(parseCid(partial))), 10_000, 'blocks freed')
    expect(await node.store.hasAll(parseCid(whole))).toBe(false)
    expect(await node.store.hasAll(parseCid(partial))).toBe(false)
    expect(logs.some((l) => l.includes(whole) && l.includes('earlier run'))).toBe(true)
    await node.stop()
    node = undefined
  })

  it('leaves the disk alone when the deployment list cannot be read, and keeps that file aside', async () => {
    const d = await tempDir('deployer-unreadable')
    cleanups.push(d.remove)
    const models = join(d.path, 'models')
    await mkdir(models, { recursive: true })
    const first = await start(d.path)
    const cid = (
      await first.store.add(
        (async function* () {
          yield Buffer.alloc(200_000, 3)
        })(),
      )
    ).cid.toString()
    await first.stop()
    await writeFile(join(models, `${cid}.gguf`), Buffer.alloc(1000, 3))
    // A list cut short (a crash mid-write on an older version): what it listed is unknown.
    await writeFile(join(d.path, 'deployments.json'), '[{"id":"mine","cid":')
    const logs: string[] = []
    node = await start(d.path, logs)
    await new Promise((r) => setTimeout(r, 500))
    expect(await readdir(models)).toEqual([`${cid}.gguf`])
    expect(await node.store.hasAll(parseCid(cid))).toBe(true)
    expect((await readdir(d.path)).some((n) => n.startsWith('deployments.json.unreadable-'))).toBe(true)
    expect(logs.some((l) => l.includes('not a deployment list'))).toBe(true)
    await node.stop()
    node = undefined
  })
})
