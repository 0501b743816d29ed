// The wire, in one import: ids, topics, limits, schemas and codecs.
// protocols/ depends on nothing else of ours; everything that crosses between peers is here.

export * from './admin-events.ts'
export * from './blocks.ts'
export * from './codec.ts'
export * from './fast-frames.ts'
export * from './ids.ts'
export * from './models.ts'
export * from './receipt.ts'
export * from './schemas.ts'
export * from './vectors.ts'
