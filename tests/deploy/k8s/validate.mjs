// Validates deploy/k8s offline: every resource the kustomization lists, each YAML document
// against the Kubernetes JSON schema of its apiVersion/kind (kubernetes-models; it does not
// reject unknown fields, so the checks below also name the fields knockout relies on), then
// prints one JSON line per container: {"resource", "container", "argv"} (command + args), which
// test_k8s.sh runs through our binaries with --check-flags.
//
//   node validate.mjs KUSTOMIZE_DIR
import fs from "node:fs";
import path from "node:path";
import YAML from "yaml";

const dir = process.argv[2];
const fail = (message) => {
  console.error(`FAIL: ${message}`);
  process.exit(1);
};
const kustomization = YAML.parse(fs.readFileSync(path.join(dir, "kustomization.yaml"), "utf8"));
if (!Array.isArray(kustomization.resources) || kustomization.resources.length === 0) {
  fail("kustomization.yaml lists no resources");
}
const seen = {};
for (const file of kustomization.resources) {
  const docs = YAML.parseAllDocuments(fs.readFileSync(path.join(dir, file), "utf8"));
  for (const doc of docs) {
    if (doc.errors.length) fail(`${file}: ${doc.errors[0].message}`);
    const object = doc.toJS();
    const { apiVersion, kind } = object;
    const group = apiVersion.includes("/") ? apiVersion : `${apiVersion}`;
    let Model;
    try {
      Model = (await import(`kubernetes-models/${group}/${kind}`))[kind];
    } catch (e) {
      fail(`${file}: no schema for ${apiVersion} ${kind}: ${e.message}`);
    }
    try {
      new Model(object).validate();
    } catch (e) {
      fail(`${file}: ${kind} ${object.metadata?.name}: ${e.message}`);
    }
    seen[`${kind}/${object.metadata.name}`] = object;
    const spec = object.spec?.template?.spec;
    for (const c of spec?.containers ?? []) {
      console.log(JSON.stringify({ resource: `${kind}/${object.metadata.name}`, container: c.name,
                                   argv: [...(c.command ?? []), ...(c.args ?? [])] }));
    }
  }
}
// What the deployment relies on beyond the schemas.
const coordinator = seen["StatefulSet/knockout-coordinator"];
const workers = seen["Deployment/knockout-worker"];
if (!coordinator || !workers || !seen["Service/knockout-coordinator"]) {
  fail("expected StatefulSet, Service and Deployment named knockout-coordinator / knockout-worker");
}
if (coordinator.spec.replicas !== 1) fail("the coordinator owns its store: replicas must be 1");
if (!coordinator.spec.volumeClaimTemplates?.length) fail("the coordinator's store needs a PersistentVolumeClaim");
const c = coordinator.spec.template.spec.containers[0];
for (const probe of ["readinessProbe", "livenessProbe"]) {
  const port = c[probe]?.grpc?.port;
  if (!port) fail(`coordinator ${probe}: a gRPC probe`);
  if (!c.args.includes(`--health-listen=0.0.0.0:${port}`)) fail(`coordinator ${probe}: port ${port} is not --health-listen's`);
}
const w = workers.spec.template.spec.containers[0];
if (w.resources?.limits?.["nvidia.com/gpu"] !== 1) fail("workers: nvidia.com/gpu: 1 in limits");
if (!(workers.spec.template.spec.terminationGracePeriodSeconds >= 30)) fail("workers: a grace period to release their shards");
for (const [name, spec] of [["coordinator", coordinator.spec.template.spec], ["worker", workers.spec.template.spec]]) {
  const secrets = (spec.volumes ?? []).filter((v) => v.secret).map((v) => v.secret.secretName);
  for (const s of ["knockout-tls", "knockout-token"]) {
    if (!secrets.includes(s)) fail(`${name}: secret ${s} not mounted`);
  }
}
console.error(`ok: ${Object.keys(seen).length} resources valid against the Kubernetes schemas`);
