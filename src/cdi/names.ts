// CDI's naming rules, apart from the spec writers so configuration can check
// names at start without loading them.

/**
 * CDI's own rules for a kind `vendor/class`: the vendor a domain-like name
 * starting with a letter, the class letters, digits, `_` and `-` starting with
 * a letter. Returns why a resource name breaks them, or null.
 */
export function cdiKindProblem(resource: string): string | null {
  const [vendor = '', cls = ''] = resource.split('/');
  if (!/^[A-Za-z]([A-Za-z0-9.-]*[A-Za-z0-9])?$/.test(vendor)) {
    return `with cdi enabled the domain "${vendor}" must start with a letter (CDI vendor names do)`;
  }
  if (!/^[A-Za-z]([A-Za-z0-9_-]*[A-Za-z0-9])?$/.test(cls)) {
    return `with cdi enabled the name "${cls}" must be letters, digits, "_" or "-", starting with a letter (CDI class names do)`;
  }
  return null;
}
