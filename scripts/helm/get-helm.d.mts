// Types for get-helm.mjs, so TypeScript tests can import it.
export declare const LAYER_PACKAGE: string;
export declare const LAYER_VERSION: string;
export declare class HelmUnavailableError extends Error {}
export declare function toolsCacheDir(): string;
export declare function helmVersion(helmPath: string): string | null;
export declare function ensureHelm(options?: { cacheDir?: string; log?: (line: string) => void }): { helm: string; version: string };
