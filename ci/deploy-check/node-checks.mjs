// Node-side helpers for ci/deploy-check/checks.py. run.sh copies this file
// into the npm tools directory so the bare imports below resolve there.
//
//   node node-checks.mjs promql < exprs.json   -> JSON: per expression, the
//        metric names it selects and any parse errors (Prometheus' own lezer
//        PromQL grammar, @prometheus-io/lezer-promql)
//   node node-checks.mjs crds < docs.json      -> JSON: per custom resource,
//        the validation errors against the KEDA / Prometheus Operator CRD
//        schemas (@kubernetes-models/*): ScaledObject, TriggerAuthentication,
//        ServiceMonitor, PrometheusRule
import { parser } from '@prometheus-io/lezer-promql';
import { ScaledObject } from '@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject';
import { TriggerAuthentication } from '@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication';
import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor';
import { PrometheusRule } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule';

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

function promql(exprs) {
  return exprs.map((expr) => {
    const tree = parser.parse(expr);
    const errors = [];
    const metrics = [];
    let namelessSelectors = 0;
    tree.iterate({
      enter(node) {
        if (node.type.isError) {
          errors.push(`syntax error at offset ${node.from}: ...${expr.slice(Math.max(0, node.from - 20), node.from + 20)}...`);
        }
        if (node.name === 'VectorSelector') {
          const ident = node.node.getChild('Identifier');
          if (ident) metrics.push(expr.slice(ident.from, ident.to));
          else namelessSelectors += 1;
        }
      },
    });
    return { expr, errors, metrics, namelessSelectors };
  });
}

const CRDS = {
  'keda.sh/v1alpha1/ScaledObject': ScaledObject,
  'keda.sh/v1alpha1/TriggerAuthentication': TriggerAuthentication,
  'monitoring.coreos.com/v1/ServiceMonitor': ServiceMonitor,
  'monitoring.coreos.com/v1/PrometheusRule': PrometheusRule,
};

function crds(docs) {
  return docs.map((doc) => {
    const key = `${doc.apiVersion}/${doc.kind}`;
    const name = `${doc.kind}/${doc.metadata && doc.metadata.name}`;
    const Model = CRDS[key];
    if (!Model) return { name, key, errors: [`no schema known for ${key}`] };
    try {
      new Model(doc).validate();
      return { name, key, errors: [] };
    } catch (e) {
      const details = (e.errors || []).map((x) => `${x.instancePath || '/'} ${x.message || x.keyword}`);
      return { name, key, errors: details.length ? details : [String(e.message || e)] };
    }
  });
}

const mode = process.argv[2];
const input = await readStdin();
let out;
if (mode === 'promql') out = promql(input);
else if (mode === 'crds') out = crds(input);
else {
  console.error(`usage: node-checks.mjs promql|crds < input.json`);
  process.exit(2);
}
process.stdout.write(JSON.stringify(out));
