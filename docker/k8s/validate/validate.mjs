// Validates Kubernetes manifests against the API's OpenAPI schemas (the
// kubernetes-models package): every document of every file must be a known
// apiVersion/kind and pass its schema (types, formats, enums, required
// fields). The package's schemas allow unknown fields, so a misspelt
// optional field is not caught here (kubectl's strict field validation
// catches it at apply time). Exit status 1 with the reasons otherwise.
//   node validate.mjs ../*.yaml
import { readFileSync } from "node:fs";
import yaml from "js-yaml";

// "apps/v1" -> "kubernetes-models/apps/v1"; "v1" (core) -> "kubernetes-models/v1".
async function modelFor(apiVersion, kind) {
  const mod = await import(`kubernetes-models/${apiVersion}`).catch(() => null);
  return mod?.[kind];
}

let failures = 0, checked = 0;
for (const file of process.argv.slice(2)) {
  const docs = yaml.loadAll(readFileSync(file, "utf8")).filter((d) => d != null);
  for (const doc of docs) {
    const where = `${file}: ${doc.kind ?? "?"} ${doc.metadata?.name ?? "?"}`;
    const Model = doc.apiVersion && doc.kind ? await modelFor(doc.apiVersion, doc.kind) : null;
    if (!Model) {
      console.error(`${where}: unknown apiVersion/kind ${doc.apiVersion}/${doc.kind}`);
      failures++;
      continue;
    }
    try {
      new Model(doc).validate();
      checked++;
    } catch (e) {
      console.error(`${where}: ${e.message}`);
      failures++;
    }
  }
}
console.log(`${checked} manifests valid, ${failures} invalid`);
process.exit(failures === 0 && checked > 0 ? 0 : 1);
