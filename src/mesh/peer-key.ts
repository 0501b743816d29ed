// The persistent identity of a peer: an Ed25519 key kept in its data dir (mode 0600), so the
// same data dir always comes back with the same peer id.
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import type { PrivateKey } from '@libp2p/interface'
import { PEER_KEY_FILE } from './constants.ts'

export async function loadOrCreatePeerKey(dataDir: string): Promise<PrivateKey> {
  const file = join(dataDir, PEER_KEY_FILE)
  try {
    return privateKeyFromProtobuf(await readFile(file))
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new Error(`cannot read the peer key ${file}: ${(err as Error).message}`, { cause: err })
    }
  }
  await mkdir(dataDir, { recursive: true })
  const key = await generateKeyPair('Ed25519')
  // 'wx' so two processes racing on one data dir cannot both write a key.
  await writeFile(file, privateKeyToProtobuf(key), { mode: 0o600, flag: 'wx' })
  return key
}
