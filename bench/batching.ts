export async function batchingBench(): Promise<void> {}
