export async function gatewayBench(): Promise<void> {}
