// Counts clear passes in http-cache-tests results the way cache-tests.fyi does
// (dependencies honoured; "optimal" and "check" tests are not passes unless they pass).
// Usage: node cache-tests-count.mjs <package dir> <weir results.json>
import fs from 'fs'
import path from 'path'
import { pathToFileURL } from 'url'

const [pkg, resultsFile] = process.argv.slice(2)
const load = async (rel) => import(pathToFileURL(path.join(pkg, rel)).href)
const { default: tests } = await load('tests/index.mjs')
const { default: surrogate } = await load('tests/surrogate-control.mjs')
tests.push(surrogate)
const display = await load('lib/display.mjs')
const { default: index } = await load('results/index.mjs')

const total = tests.reduce((n, suite) => n + suite.tests.length, 0)
function count (results) {
  let passes = 0
  const failures = []
  for (const suite of tests) {
    for (const test of suite.tests) {
      let kind
      try {
        kind = display.determineTestResult(tests, test.id, results)
      } catch (e) {
        continue
      }
      if (kind[2] === '✅') passes++
      else if (kind[2] === '⛔️') failures.push(`${test.id}: ${(results[test.id] || [])[1] || ''}`)
    }
  }
  return { passes, failures }
}

const ours = count(JSON.parse(fs.readFileSync(resultsFile, 'utf8')))
for (const f of ours.failures) console.log(`  fail  ${f}`)
console.log('')
const rows = [['weir (this run)', ours.passes]]
for (const item of index) {
  if (item.type !== 'rev-proxy') continue
  const results = JSON.parse(fs.readFileSync(path.join(pkg, 'results', item.file), 'utf8'))
  rows.push([`${item.name} ${item.version || ''} (published)`, count(results).passes])
}
rows.sort((a, b) => b[1] - a[1])
for (const [name, n] of rows) console.log(`${String(n).padStart(5)}  ${name}`)
console.log(`\nPASSES ${ours.passes} of ${total} tests`)
