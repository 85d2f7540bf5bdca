// Types for render-manifests.mjs, so TypeScript tests can import it.
export declare const repoRoot: string;
export declare const chartDir: string;
export declare const manifestsDir: string;
export declare const RELEASE: string;
export declare const NAMESPACE: string;
export declare const MANIFESTS: readonly { file: string; what: string; args: readonly string[] }[];
export declare function stripHelmLabels(text: string): string;
export declare function renderManifests(helm: string): { file: string; text: string }[];
