package org.ceindex.elasticsearch;

import org.apache.lucene.analysis.Analyzer;
import org.apache.lucene.analysis.en.EnglishAnalyzer;
import org.elasticsearch.plugin.NamedComponent;
import org.elasticsearch.plugin.analysis.AnalyzerFactory;

/**
 * The {@code ceindex_english} analyzer: Lucene's EnglishAnalyzer (standard tokenizer, English possessives, lower
 * case, English stop words, Porter stemming) - the very class behind the {@code english} analyzer of Elasticsearch's
 * analysis-common module and of OpenSearch, which the Maven Central test distribution lacks. A stable plugin: it
 * uses only the plugin analysis API and the lucene-analysis-common jar the server already ships.
 */
@NamedComponent("ceindex_english")
public class EnglishAnalyzerFactory implements AnalyzerFactory {
    @Override
    public Analyzer create() {
        return new EnglishAnalyzer();
    }
}
