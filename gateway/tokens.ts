// Counting tokens ourselves, for an upstream that reports no usage: OpenAI's o200k_base encoding
// (gpt-tokenizer), loaded on first use. It is an estimate of another model's tokenizer — close for
// English text, and the only honest count we can make without the provider's numbers.
import type { WireChatMessage } from '../protocols/index.ts'

type Counter = (text: string) => number

let counter: Promise<Counter> | undefined

function load(): Promise<Counter> {
  counter ??= import('gpt-tokenizer/encoding/o200k_base').then((m) => (text: string) => m.countTokens(text))
  return counter
}

/** Loads the encoding ahead of the first count (it takes a few hundred ms). */
export function warmTokenCounter(): void {
  void load()
}

export async function countTokens(text: string): Promise<number> {
  if (text.length === 0) return 0
  return (await load())(text)
}

/** Prompt tokens of a chat: each message's content plus the few tokens chat formats add around it. */
export async function countChatTokens(messages: WireChatMessage[]): Promise<number> {
  const count = await load()
  let total = 3
  for (const m of messages) total += 4 + count(m.content)
  return total
}
