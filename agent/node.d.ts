// The few Node built-ins bgshell/agent uses (the project has no @types/node); compile-time only,
// not shipped: no exported type of index.d.mts refers to them.
declare module 'node:fs' {
  export function statSync(path: string): { size: number; isDirectory(): boolean }
  export function createReadStream(path: string): AsyncIterable<Uint8Array>
}
declare module 'node:os' {
  export function homedir(): string
}
declare module 'node:path' {
  export function dirname(path: string): string
  export function isAbsolute(path: string): boolean
  export function join(...paths: string[]): string
  export function relative(from: string, to: string): string
  export function resolve(...paths: string[]): string
}
